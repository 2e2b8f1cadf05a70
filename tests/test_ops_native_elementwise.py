"""Elementwise ops (ops/elementwise.py) on their load-time-specialised paths, against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import ops_native


@pytest.mark.parametrize("exponent,dtype", [(2.0, np.float32), (2.0, np.int64), (3.0, np.float32), (0.5, np.float32)])
def test_pow_by_a_constant_matches_onnxruntime_squares_as_products(exponent: float, dtype: type) -> None:
    """Pow(x, 2) runs as x * x (float32), every other exponent or type through the general power."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    e = np.array(exponent, np.float32 if dtype == np.float32 else dtype)
    g = helper.make_graph([helper.make_node("Pow", ["x", "e"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", elem, ["A", "B"])],
                          [helper.make_tensor_value_info("y", elem, ["A", "B"])], [numpy_helper.from_array(e, "e")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(5)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in ((3, 7), (2, 300)):
        x = (rng.standard_normal(shape) * 10).astype(dtype)
        if exponent == 0.5:
            x = np.abs(x)
        for threads in (1, 2):
            got = ops_native.InferenceSession(model, threads=threads).run(None, {"x": x})[0]
            want = ref.run(None, {"x": x})[0]
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-6)
