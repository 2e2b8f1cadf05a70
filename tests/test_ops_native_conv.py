"""Conv routing in ops/conv.py that the kernel tests do not see: 1-D convolutions ([N, C, L] inputs) run as
2-D plans on a [N, C, 1, L] view, remembered per input shape; compared with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native

F = TensorProto.FLOAT


@pytest.mark.parametrize("attrs", [{"pads": [1, 1]}, {"strides": [2], "dilations": [2]}, {"group": 2, "pads": [0, 2]},
                                   {"auto_pad": "SAME_UPPER", "strides": [3]}], ids=["pads", "strided", "grouped", "same"])
def test_1d_convs_match_onnxruntime_over_repeated_runs_at_several_lengths(attrs: dict) -> None:
    """Two 1-D convs and a Relu (an STFT front end / a TCN); each length is run twice, so the second run takes
    the remembered plan, and lengths alternate so a plan kept for the wrong shape shows."""
    rng = np.random.default_rng(6)
    w1 = rng.standard_normal((8, 4 // attrs.get("group", 1), 3)).astype(np.float32)
    w2 = rng.standard_normal((6, 8, 1)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], **attrs),
                           helper.make_node("Relu", ["c1"], ["r"]),
                           helper.make_node("Conv", ["r", "w2"], ["y"])], "conv1d",
                          [helper.make_tensor_value_info("x", F, ["N", 4, "L"])],
                          [helper.make_tensor_value_info("y", F, ["N", 6, "M"])],
                          [numpy_helper.from_array(v, k) for k, v in (("w1", w1), ("w2", w2), ("b1", b1))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    xs = [rng.standard_normal(s).astype(np.float32) for s in ((1, 4, 17), (2, 4, 40), (1, 4, 17))]
    for threads in (1, 2):
        sess = ops_native.InferenceSession(model, threads=threads)
        for x in xs + xs:
            got, want = sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0]
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
