"""Raw images into input tensors (stream frames that carry PNG/JPEG bytes), with Pillow.

Only PNG and JPEG are opened (no other Pillow plugin sees hostile bytes), and an image larger than
``MAX_PIXELS`` is refused from its header, before its pixels are decoded (a decompression bomb).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from edge_agent.protocol.streams import Preprocess

MAX_PIXELS = 50_000_000
FORMATS = ("PNG", "JPEG")
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


class ImageError(ValueError):
    """The bytes are not a PNG/JPEG this device will decode, or the image does not fit the model input."""


def looks_like_image(payload: bytes | memoryview) -> bool:
    """A PNG or JPEG by its magic bytes (a bare image published on a source topic)."""
    head = bytes(payload[:8])
    return head.startswith(_PNG) or head.startswith(_JPEG)


def resolve(pre: Preprocess | None, shape: Sequence[object], dtype: str) -> Preprocess:
    """The preprocessing to apply for a model input of ``shape``/``dtype``: the declared one, with the size
    and dtype the model needs when it left them open; without a declaration, the layout is guessed from the
    shape (channels of 1 or 3 second = NCHW, last = NHWC) and pixels are scaled to [0, 1]."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if pre is None:
        if len(dims) == 4 and dims[1] in (1, 3):
            pre = Preprocess(layout="NCHW", color="L" if dims[1] == 1 else "RGB")
        elif len(dims) == 4 and dims[3] in (1, 3):
            pre = Preprocess(layout="NHWC", color="L" if dims[3] == 1 else "RGB")
        else:
            raise ImageError(f"model input of shape {list(shape)} does not look like an image; declare the "
                             "preprocessing (--preprocess layout=...,resize=HxW)")
    size = pre.size
    if size is None and len(dims) == 4:
        h, w = (dims[2], dims[3]) if pre.layout == "NCHW" else (dims[1], dims[2])
        size = (h, w) if h and w else None
    return Preprocess(size=size, layout=pre.layout, mean=pre.mean, scale=pre.scale, color=pre.color,
                      dtype=pre.dtype or dtype)


def decode(data: bytes | memoryview, pre: Preprocess) -> np.ndarray:
    """Decode ``data`` and apply ``pre`` (already :func:`resolve`-d): an array of shape (1, C, H, W) or
    (1, H, W, C). Raises ImageError saying why."""
    try:
        img = Image.open(io.BytesIO(bytes(data)), formats=FORMATS)
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ImageError(f"image of {w}x{h} pixels exceeds the limit of {MAX_PIXELS}")
        img.load()
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from None
    img = img.convert("L" if pre.color == "L" else "RGB")
    if pre.size is not None and (img.height, img.width) != tuple(pre.size):
        img = img.resize((pre.size[1], pre.size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if pre.color == "BGR":
        arr = arr[:, :, ::-1]
    arr = (arr - np.asarray(pre.mean, np.float32)) * np.asarray(pre.scale, np.float32)
    if pre.layout == "NCHW":
        arr = arr.transpose(2, 0, 1)
    dtype = np.dtype(pre.dtype or "float32")
    if dtype.kind in "iub":
        info = np.iinfo(dtype) if dtype.kind != "b" else None
        arr = np.rint(arr) if info is None else np.clip(np.rint(arr), info.min, info.max)
    return np.ascontiguousarray(arr[None].astype(dtype))
