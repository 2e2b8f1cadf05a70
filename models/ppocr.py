"""The PP-OCRv4 text detection model shipped inside the ``rapidocr_onnxruntime`` package.

It is a real, production-sized graph (~670 nodes, weights held in Constant nodes, opset 12,
dynamic H/W) and the main workload used to test partitioning and the native core.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx

from models.graph import load_model

__all__ = ["DET_INPUT_SHAPE", "DET_MODEL_FILE", "det_model_path", "load_det_model"]

DET_INPUT_SHAPE = (1, 3, 640, 640)
DET_MODEL_FILE = "ch_PP-OCRv4_det_infer.onnx"
_PACKAGE = "rapidocr_onnxruntime"


def det_model_path() -> Path:
    """Path of ``ch_PP-OCRv4_det_infer.onnx`` in the installed ``rapidocr_onnxruntime`` package.

    The package is located with ``importlib.util.find_spec`` and never imported (importing it pulls
    in OpenCV). Raises ImportError if the package is not installed and FileNotFoundError if it is
    installed but the model file is missing.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not (spec.submodule_search_locations or spec.origin):
        raise ImportError(
            f"package {_PACKAGE!r} is not installed; install it (pip install rapidocr-onnxruntime) "
            f"to get {DET_MODEL_FILE}"
        )
    roots = list(spec.submodule_search_locations or []) or [str(Path(spec.origin).parent)]
    for root in roots:
        for candidate in (Path(root) / "models" / DET_MODEL_FILE, Path(root) / DET_MODEL_FILE):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"{DET_MODEL_FILE} not found in {_PACKAGE} at {roots} (looked in models/)")


def load_det_model() -> onnx.ModelProto:
    """Load and validate the PP-OCRv4 detection model."""
    return load_model(det_model_path())
