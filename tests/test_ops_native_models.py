"""Whole models through ops_native.InferenceSession against ONNX Runtime (rtol 1e-4, atol 1e-4).

Every zoo model and the PP-OCRv4 text detector, at 1 and 2 threads, on every ISA this CPU offers.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import ops_native
from models import ppocr, zoo
from ops_native import _core

ISAS = _core.available_isas()
THREADS = [1, 2]


def text_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A [1, 3, h, w] image of dark glyph-like strokes on white, normalised like PP-OCR ((x - .5) / .5).

    Random noise gives the detector an all-zero probability map; strokes in text lines give it real text
    regions, so the comparison covers large and small output values.
    """
    rng = np.random.default_rng(seed)
    img = np.ones((h, w), np.float32)
    for y0 in range(min(40, h // 4), h - 40, 90):
        x = 20
        while x < w - 40:
            for _ in range(3):
                if rng.random() < 0.5:
                    x1 = x + int(rng.integers(0, 14))
                    img[y0 + int(rng.integers(0, 24)): y0 + 24 + int(rng.integers(4, 10)), x1: x1 + 3] = 0
                else:
                    yy = y0 + int(rng.integers(0, 30))
                    img[yy: yy + 3, x: x + 16] = 0
            x += 22
    return np.ascontiguousarray(np.repeat(((img - 0.5) / 0.5)[None, None], 3, axis=1))


@cache
def _zoo(name: str) -> tuple[onnx.ModelProto, dict, list]:
    model = zoo.build(name)
    feeds = zoo.sample_inputs(model)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    return model, feeds, ref


@cache
def _det(h: int, w: int) -> tuple[onnx.ModelProto, dict, list]:
    model = ppocr.load_det_model()
    feeds = {"x": text_image(h, w)}
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    return model, feeds, ref


def _assert_matches(model: onnx.ModelProto, feeds: dict, ref: list, threads: int) -> None:
    sess = ops_native.InferenceSession(model, threads=threads)
    got = sess.run(None, feeds)
    assert [o.name for o in sess.get_outputs()] == [o.name for o in model.graph.output]
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_every_zoo_model_is_fully_supported() -> None:
    for name in zoo.names():
        assert ops_native.unsupported_ops(zoo.build(name)) == [], name


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("name", zoo.names())
def test_zoo_model_matches_onnxruntime(name: str, threads: int, isa: str) -> None:
    _assert_matches(*_zoo(name), threads=threads)


def test_ppocr_det_model_is_fully_supported() -> None:
    assert ops_native.unsupported_ops(ppocr.load_det_model()) == []


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("hw", [(640, 640), (320, 256)], ids=["640x640", "320x256"])
def test_ppocr_det_matches_onnxruntime(hw: tuple[int, int], threads: int, isa: str) -> None:
    model, feeds, ref = _det(*hw)
    assert float(ref[0].max()) > 0.5, "the synthetic text image should produce text regions"
    _assert_matches(model, feeds, ref, threads)


def test_ppocr_det_session_handles_changing_input_sizes() -> None:
    model, feeds640, ref640 = _det(640, 640)
    _, feeds_small, ref_small = _det(320, 256)
    sess = ops_native.InferenceSession(model, threads=2)
    for feeds, ref in [(feeds_small, ref_small), (feeds640, ref640), (feeds_small, ref_small)]:
        np.testing.assert_allclose(sess.run(None, feeds)[0], ref[0], rtol=1e-4, atol=1e-4)


def test_unfused_plan_also_matches_onnxruntime() -> None:
    """Fusions are an optimisation only: the plain node-by-node plan gives the same answer."""
    model, feeds, ref = _det(640, 640)
    plain = ops_native.InferenceSession(model, fuse=False)
    fused = ops_native.InferenceSession(model)
    assert len(plain._plan.steps) > len(fused._plan.steps)
    np.testing.assert_allclose(plain.run(None, feeds)[0], ref[0], rtol=1e-4, atol=1e-4)
