"""Control flow in the ops_native executor (ops/control.py): If and Loop subgraphs compiled into their own
plans, reading outer-scope values, with their own initializers, nested; the support check looks into
subgraphs; Silero VAD v5 (25 nested If nodes) runs and matches ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native
from models import corpus
from ops_native import _core
from ops_native.ops import registry

F = TensorProto.FLOAT


def _ort(model: onnx.ModelProto, feeds: dict) -> list:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _branch(name: str, nodes: list, out: str, inits: dict) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, F, None)],
                             [numpy_helper.from_array(v, k) for k, v in inits.items()])


def _if_model(nested: bool = False) -> onnx.ModelProto:
    """y = If(sum(x) > 0): then x * w_then + b (w_then its own initializer, b an outer one, x an outer input);
    else: relu(x - z) where z is computed outside (or, nested, another If on a second condition)."""
    then_g = _branch("then", [helper.make_node("Mul", ["x", "w_then"], ["t0"]),
                              helper.make_node("Add", ["t0", "b"], ["t_out"])], "t_out",
                     {"w_then": np.array([2.0, 3.0, 4.0], np.float32)})
    else_nodes = [helper.make_node("Sub", ["x", "z"], ["e0"]), helper.make_node("Relu", ["e0"], ["e_out"])]
    if nested:
        inner_then = _branch("inner_then", [helper.make_node("Mul", ["e0", "k"], ["it"])], "it",
                             {"k": np.array(-1.0, np.float32)})
        inner_else = _branch("inner_else", [helper.make_node("Add", ["e0", "b"], ["ie"])], "ie", {})
        else_nodes = [else_nodes[0], helper.make_node("If", ["c2"], ["e_out"], then_branch=inner_then,
                                                      else_branch=inner_else)]
    else_g = _branch("else", else_nodes, "e_out", {})
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("Mul", ["x", "half"], ["z"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    inputs = [helper.make_tensor_value_info("x", F, [3])]
    if nested:
        inputs.append(helper.make_tensor_value_info("c2", TensorProto.BOOL, []))
    inits = {"b": np.array([1.0, -1.0, 0.5], np.float32), "zero": np.array(0.0, np.float32),
             "half": np.array(0.5, np.float32)}
    g = helper.make_graph(nodes, "if_model", inputs, [helper.make_tensor_value_info("y", F, [3])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("x", [[1.0, 2.0, -0.5], [-1.0, -2.0, 0.5]], ids=["then", "else"])
def test_if_branches_read_outer_values_and_their_own_initializers(x: list) -> None:
    model = _if_model()
    feeds = {"x": np.array(x, np.float32)}
    for threads in (1, 2):
        got = ops_native.InferenceSession(model, threads=threads).run(None, feeds)
        np.testing.assert_allclose(got[0], _ort(model, feeds)[0], rtol=1e-6)


@pytest.mark.parametrize("c2", [True, False])
@pytest.mark.parametrize("x", [[1.0, 2.0, -0.5], [-1.0, -2.0, 0.5]], ids=["then", "else"])
def test_nested_if_reads_values_two_scopes_out(x: list, c2: bool) -> None:
    model = _if_model(nested=True)
    feeds = {"x": np.array(x, np.float32), "c2": np.array(c2)}
    got = ops_native.InferenceSession(model).run(None, feeds)
    np.testing.assert_allclose(got[0], _ort(model, feeds)[0], rtol=1e-6)


def test_if_node_lists_its_subgraph_reads_as_inputs_for_the_run_order_and_memory_plan() -> None:
    from ops_native.loader import convert_nodes

    if_node = [n for n in convert_nodes(_if_model(nested=True).graph) if n.op_type == "If"][0]
    assert if_node.inputs[:if_node.attrs["_n_inputs"]] == ["c"]
    assert set(if_node.inputs[1:]) == {"x", "b", "z", "c2"}


def test_error_in_a_branch_names_the_if_node_and_the_inner_node() -> None:
    then_g = _branch("then", [helper.make_node("Reshape", ["x", "bad_shape"], ["t_out"])], "t_out",
                     {"bad_shape": np.array([7], np.int64)})
    else_g = _branch("else", [helper.make_node("Identity", ["x"], ["e_out"])], "e_out", {})
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], name="the_if", then_branch=then_g, else_branch=else_g)],
                          "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                                helper.make_tensor_value_info("x", F, [3])],
                          [helper.make_tensor_value_info("y", F, [3])])
    sess = ops_native.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    np.testing.assert_array_equal(sess.run(None, {"c": np.array(False), "x": np.ones(3, np.float32)})[0], 1.0)
    with pytest.raises(ops_native.OpsNativeError, match=r"the_if.*then_branch.*Reshape"):
        sess.run(None, {"c": np.array(True), "x": np.ones(3, np.float32)})


def _loop_model() -> onnx.ModelProto:
    """Loop M times while acc < limit: acc += x * w (w a body initializer, x an outer input); scan out acc."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["xw"]), helper.make_node("Add", ["acc_in", "xw"], ["acc_out"]),
         helper.make_node("ReduceSum", ["acc_out"], ["tot"], keepdims=0),
         helper.make_node("Less", ["tot", "limit"], ["cond_out"]),
         helper.make_node("Identity", ["acc_out"], ["scan_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", F, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", F, [2]), helper.make_tensor_value_info("scan_out", F, [2])],
        [numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w")])
    g = helper.make_graph(
        [helper.make_node("Loop", ["M", "cond", "acc0"], ["acc", "scans"], body=body)], "loop_model",
        [helper.make_tensor_value_info("M", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc0", F, [2]), helper.make_tensor_value_info("x", F, [2])],
        [helper.make_tensor_value_info("acc", F, [2]), helper.make_tensor_value_info("scans", F, [None, 2])],
        [numpy_helper.from_array(np.array(20.0, np.float32), "limit")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("trips,cond", [(5, True), (100, True), (3, False), (0, True)])
def test_loop_carries_values_stacks_scan_outputs_and_stops_on_its_condition(trips: int, cond: bool) -> None:
    model = _loop_model()
    feeds = {"M": np.array(trips, np.int64), "cond": np.array(cond), "acc0": np.zeros(2, np.float32),
             "x": np.array([0.5, 1.0], np.float32)}
    got = ops_native.InferenceSession(model).run(None, feeds)
    want = _ort(model, feeds)
    np.testing.assert_allclose(got[0], want[0])
    if want[1].size:
        np.testing.assert_allclose(got[1], want[1])
    else:
        assert got[1].size == 0


def test_unsupported_ops_looks_into_subgraphs() -> None:
    model = _if_model()
    assert ops_native.unsupported_ops(model) == []
    else_g = model.graph.node[3].attribute[1].g if model.graph.node[3].attribute[1].name == "else_branch" \
        else model.graph.node[3].attribute[0].g
    else_g.node.append(helper.make_node("Foo", ["e_out"], ["unused"], domain="custom.domain"))
    model.opset_import.append(helper.make_opsetid("custom.domain", 1))
    assert ops_native.unsupported_ops(model) == ["custom.domain.Foo"]
    with pytest.raises(ops_native.UnsupportedOpError, match="Foo"):
        ops_native.InferenceSession(model)


def test_silero_vad_support_check_sees_the_ops_inside_its_if_branches() -> None:
    e = corpus.get("silero_vad_v5")
    if corpus.unavailable_reason(e):
        pytest.skip(corpus.unavailable_reason(e))
    missing = ops_native.unsupported_ops(corpus.load(e))
    assert "If" not in missing
    assert missing == ([] if "LSTM" in ops_native.supported_ops() else ["LSTM"])


def _reference_lstm(node: registry.Node, ctx: registry.BuildContext) -> registry.Fn:
    """Forward, default-activation ONNX LSTM in numpy: a stand-in for the native one (another branch) so that
    the If machinery is tested on the real model today."""
    hs = int(node.attrs["hidden_size"])
    assert node.attrs.get("direction", "forward") == "forward"

    def sig(v: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-v))

    def fn(args: list) -> list:
        x, w, r = args[0], args[1], args[2]
        b = args[3] if len(args) > 3 and args[3] is not None else np.zeros((1, 8 * hs), np.float32)
        h = args[5][0] if len(args) > 5 and args[5] is not None else np.zeros((x.shape[1], hs), np.float32)
        c = args[6][0] if len(args) > 6 and args[6] is not None else np.zeros((x.shape[1], hs), np.float32)
        ys = []
        for t in range(x.shape[0]):
            i, o, f, g = np.split(x[t] @ w[0].T + h @ r[0].T + b[0, :4 * hs] + b[0, 4 * hs:], 4, axis=1)
            c = sig(f) * c + sig(i) * np.tanh(g)
            h = sig(o) * np.tanh(c)
            ys.append(h)
        return [np.stack(ys)[:, None].astype(np.float32), h[None].astype(np.float32), c[None].astype(np.float32)]

    return fn


@pytest.mark.parametrize("rate", [16000, 8000])
def test_silero_vad_runs_through_its_nested_ifs_and_matches_onnxruntime(rate: int, monkeypatch) -> None:  # noqa: ANN001
    e = corpus.get("silero_vad_v5")
    if corpus.unavailable_reason(e):
        pytest.skip(corpus.unavailable_reason(e))
    if "LSTM" not in registry.REGISTRY:
        monkeypatch.setitem(registry.REGISTRY, "LSTM", _reference_lstm)
    model = corpus.load(e)
    for k in (0, 1):
        feeds = corpus.sample_inputs(e, k)
        feeds["sr"] = np.array(rate, feeds["sr"].dtype)
        if rate == 8000:   # 256 samples + 32 of context instead of 512 + 64
            feeds["input"] = feeds["input"][:, :288]
        want = _ort(model, feeds)
        for threads in (1, 2):
            got = ops_native.InferenceSession(model, threads=threads).run(None, feeds)
            for g, w in zip(got, want):
                assert g.shape == w.shape
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_scan_runs_reversed_along_axis_one_with_an_outer_value_and_matches_onnxruntime() -> None:
    """state += x_t * g (g read from the outer graph); scan out the running state, reversed, stacked on axis 1."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["x_t", "g"], ["xg"]), helper.make_node("Add", ["s_in", "xg"], ["s_out"]),
         helper.make_node("Identity", ["s_out"], ["y_t"])],
        "body", [helper.make_tensor_value_info("s_in", F, [2]), helper.make_tensor_value_info("x_t", F, [2])],
        [helper.make_tensor_value_info("s_out", F, [2]), helper.make_tensor_value_info("y_t", F, [2])])
    g = helper.make_graph(
        [helper.make_node("Scan", ["s0", "x"], ["s", "ys"], body=body, num_scan_inputs=1, scan_input_axes=[1],
                          scan_input_directions=[1], scan_output_axes=[1], scan_output_directions=[1])],
        "scan_model", [helper.make_tensor_value_info("s0", F, [2]), helper.make_tensor_value_info("x", F, [2, 5]),
                       helper.make_tensor_value_info("g", F, [2])],
        [helper.make_tensor_value_info("s", F, [2]), helper.make_tensor_value_info("ys", F, [2, 5])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(1)
    feeds = {"s0": rng.standard_normal(2).astype(np.float32), "x": rng.standard_normal((2, 5)).astype(np.float32),
             "g": np.array([2.0, -1.0], np.float32)}
    for got, want in zip(ops_native.InferenceSession(model).run(None, feeds), _ort(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def _const_if_model(cond: bool, inner_runtime: bool = False, clash: bool = False) -> onnx.ModelProto:
    """y = If(flag) on a condition computed from initializers only (flag = Greater(a, b)): then x * 2 + b_then
    (b_then its own initializer), else relu(x) - 1; inner_runtime: the else branch holds a second If on a
    runtime condition c2. clash: a second If with the same branches (sibling scopes may reuse names; only the
    first can be inlined, the second stays an If)."""
    then_g = _branch("then", [helper.make_node("Mul", ["x", "two"], ["t0"]),
                              helper.make_node("Add", ["t0", "b_then"], ["t_out"])], "t_out",
                     {"b_then": np.array([0.5, -0.5, 1.0], np.float32)})
    else_nodes = [helper.make_node("Relu", ["x"], ["e0"]), helper.make_node("Sub", ["e0", "one"], ["e_out"])]
    if inner_runtime:
        inner_then = _branch("inner_then", [helper.make_node("Neg", ["e0"], ["it"])], "it", {})
        inner_else = _branch("inner_else", [helper.make_node("Add", ["e0", "one"], ["ie"])], "ie", {})
        else_nodes = [else_nodes[0], helper.make_node("If", ["c2"], ["e_out"], name="inner_if",
                                                      then_branch=inner_then, else_branch=inner_else)]
    else_g = _branch("else", else_nodes, "e_out", {})
    nodes = [helper.make_node("Greater", ["a", "b"], ["flag"]),
             helper.make_node("Mul", ["x", "one"], ["z"]),
             helper.make_node("If", ["flag"], ["y"], name="outer_if", then_branch=then_g, else_branch=else_g),
             helper.make_node("Add", ["y", "z"], ["out"])]
    if clash:
        nodes[-1:] = [helper.make_node("If", ["flag"], ["y2"], name="twin_if", then_branch=then_g, else_branch=else_g),
                      helper.make_node("Sum", ["y", "z", "y2"], ["out"])]
    inputs = [helper.make_tensor_value_info("x", F, [3])]
    if inner_runtime:
        inputs.append(helper.make_tensor_value_info("c2", TensorProto.BOOL, []))
    inits = {"a": np.array(1.0 if cond else -1.0, np.float32), "b": np.array(0.0, np.float32),
             "two": np.array(2.0, np.float32), "one": np.array(1.0, np.float32)}
    g = helper.make_graph(nodes, "const_if", inputs, [helper.make_tensor_value_info("out", F, [3])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _if_steps(sess: ops_native.InferenceSession) -> list:
    return [s.fn for s, n in zip(sess._plan.steps, sess._plan.nodes) if n.op_type == "If"]


@pytest.mark.parametrize("cond", [True, False], ids=["then", "else"])
def test_if_on_a_constant_condition_is_replaced_by_its_branch_at_load(cond: bool) -> None:
    model = _const_if_model(cond)
    feeds = {"x": np.array([1.0, -2.0, 0.5], np.float32)}
    for threads in (1, 2):
        sess = ops_native.InferenceSession(model, threads=threads)
        assert _if_steps(sess) == []   # inlined: no If left to dispatch at run time
        np.testing.assert_allclose(sess.run(None, feeds)[0], _ort(model, feeds)[0], rtol=1e-6)


@pytest.mark.parametrize("c2", [True, False])
def test_constant_if_inlined_keeps_a_nested_runtime_if_as_a_native_step(c2: bool) -> None:
    model = _const_if_model(False, inner_runtime=True)
    sess = ops_native.InferenceSession(model)
    steps = _if_steps(sess)
    assert [n.name for n in sess._plan.nodes if n.op_type == "If"] == ["inner_if"]
    assert all(isinstance(f, _core.IfStep) for f in steps) and len(steps) == 1
    for x in ([1.0, -2.0, 0.5], [-1.0, 3.0, 0.0]):
        feeds = {"x": np.array(x, np.float32), "c2": np.array(c2)}
        np.testing.assert_allclose(sess.run(None, feeds)[0], _ort(model, feeds)[0], rtol=1e-6)


def test_constant_if_whose_branch_reuses_a_name_already_inlined_is_kept_and_still_correct() -> None:
    model = _const_if_model(True, clash=True)
    sess = ops_native.InferenceSession(model)
    assert [n.name for n in sess._plan.nodes if n.op_type == "If"] == ["twin_if"]
    feeds = {"x": np.array([1.0, -2.0, 0.5], np.float32)}
    np.testing.assert_allclose(sess.run(None, feeds)[0], _ort(model, feeds)[0], rtol=1e-6)


def test_if_on_a_runtime_condition_is_not_folded_and_takes_both_branches() -> None:
    model = _if_model(nested=True)
    sess = ops_native.InferenceSession(model)
    (step,) = _if_steps(sess)
    assert isinstance(step, _core.IfStep)
    for x in ([1.0, 2.0, -0.5], [-1.0, -2.0, 0.5]):
        for c2 in (True, False):
            feeds = {"x": np.array(x, np.float32), "c2": np.array(c2)}
            np.testing.assert_allclose(sess.run(None, feeds)[0], _ort(model, feeds)[0], rtol=1e-6)


def test_if_condition_with_more_than_one_value_fails_naming_the_node() -> None:
    then_g = _branch("then", [helper.make_node("Identity", ["x"], ["t_out"])], "t_out", {})
    else_g = _branch("else", [helper.make_node("Neg", ["x"], ["e_out"])], "e_out", {})
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], name="the_if", then_branch=then_g, else_branch=else_g)],
                          "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [None]),
                                helper.make_tensor_value_info("x", F, [3])],
                          [helper.make_tensor_value_info("y", F, [3])])
    sess = ops_native.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    np.testing.assert_array_equal(sess.run(None, {"c": np.array([False]), "x": np.ones(3, np.float32)})[0], -1.0)
    with pytest.raises(ops_native.OpsNativeError, match=r"the_if.*one value"):
        sess.run(None, {"c": np.array([True, False]), "x": np.ones(3, np.float32)})
