"""ops_native.memory, ops_native.steps and the BufferPool: slots, release points, the run loops that honour
them, and buffer reuse across nodes and runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native
from models import zoo
from ops_native import _core
from ops_native.memory import plan_memory
from ops_native.ops import BufferPool, Node
from ops_native.steps import Step, release


def _chain() -> tuple[list[Node], dict[str, np.ndarray]]:
    """x -> A(x, w) -> t -> B(t, "") -> (y, dead) ; y -> C(y) -> z ; outputs y, z."""
    nodes = [Node("a", "A", ["x", "w"], ["t"]), Node("b", "B", ["t", ""], ["y", "dead"]),
             Node("c", "C", ["y"], ["z"])]
    return nodes, {"w": np.ones(3, np.float32), "unused": np.zeros(1, np.float32)}


def test_slots_put_constants_first_then_inputs_then_node_outputs() -> None:
    nodes, consts = _chain()
    plan = plan_memory(nodes, consts, ["x"], ["y", "z"])
    assert plan.slots == {"": 0, "w": 1, "x": 2, "t": 3, "y": 4, "dead": 5, "z": 6}
    assert plan.template[1] is consts["w"] and plan.template[0] is None and len(plan.template) == 7
    assert plan.const_slots == {1}                  # an initializer nothing reads gets no slot
    assert plan.input_slots == {"x": 2} and plan.output_slots == {"y": 4, "z": 6}
    assert plan.ins == [(2, 1), (3, 0), (4,)] and plan.outs == [(3,), (4, 5), (6,)]


def test_values_die_after_their_last_use_and_caller_arrays_are_never_recycled() -> None:
    nodes, consts = _chain()
    plan = plan_memory(nodes, consts, ["x"], ["y", "z"])
    assert plan.clear == [(2,), (), ()]             # the caller's x: emptied after A, never pooled
    assert plan.recycle == [(), (3, 5), ()]         # t after its last reader; "dead" right after its producer
    released = {s for r in plan.recycle + plan.clear for s in r}
    assert not released & (plan.const_slots | set(plan.output_slots.values()))


def test_release_recycles_pooled_buffers_and_only_clears_the_rest() -> None:
    pool = BufferPool()
    big = pool.empty((1 << 15,))                    # 128 KiB: over BufferPool.MIN_BYTES, so pooled
    caller = np.ones(1 << 15, np.float32)
    values = [None, big, caller]
    del big
    release(Step(None, (), (), (1,), (2,)), values, pool)
    assert values == [None, None, None]
    assert len(pool._free) == 1 and caller.base is None   # the caller's array stays theirs


def test_run_steps_follows_the_same_release_contract() -> None:
    pool = BufferPool()
    n = 1 << 15

    def produce(args: list) -> list:
        return [pool.empty((n,))]

    def consume(args: list) -> list:
        return [np.float32(args[0].size + args[1].size)]

    caller = np.ones(n, np.float32)
    steps = [Step(produce, (), (2,), (), ()), Step(consume, (1, 2), (3,), (2,), (1,))]
    values = _core.run_steps(steps, [None, caller, None, None], pool)
    assert values[:3] == [None, None, None] and values[3] == 2 * n
    assert len(pool._free) == 1                     # the intermediate came back, the caller's array did not


def test_step_fields_are_read_by_index_in_the_documented_order() -> None:
    s = Step(len, (1,), (2,), (3,), (4,))
    assert tuple(s) == (len, (1,), (2,), (3,), (4,))   # executor.pxi's run_steps indexes these
    assert Step._fields == ("fn", "ins", "outs", "recycle", "clear")


def test_intermediate_buffers_are_released_after_their_last_use() -> None:
    sess = ops_native.InferenceSession(zoo.build("mobilenetv2"))
    plan = sess._plan
    freed = {s for step in plan.steps for s in step.recycle + step.clear}
    outputs = set(plan.output_slots.values())
    produced = {s for step in plan.steps for s in step.outs if s}
    assert produced - outputs <= freed  # every intermediate slot is cleared at its last use
    assert not freed & (outputs | plan.const_slots)


def test_second_run_reuses_every_intermediate_buffer() -> None:
    """The memory plan: buffers released at their last use come back to the pool, so a repeated run with the
    same shapes allocates no new large intermediate."""
    model = zoo.build("mobilenetv2")
    feeds = zoo.sample_inputs(model)
    sess = ops_native.InferenceSession(model)
    sess.run(None, feeds)
    pool = sess._plan.pool._free
    first = {id(b) for b in pool}
    sess.run(None, feeds)
    second = {id(b) for b in pool}
    assert first and second == first
    assert all(b.ctypes.data % 64 == 0 for b in pool), "pooled buffers start on a cache line"


@pytest.mark.parametrize("profiled", [False, True])   # the C run loop, and the Python one of profiling
def test_a_buffer_still_viewed_by_a_live_value_is_not_recycled(profiled: bool) -> None:
    """Reshape returns a view of Relu's (pooled) output, and Relu's slot is freed after it; the next Add
    then asks the pool for a buffer of the same size. Handing it Relu's buffer would overwrite the view."""
    shape = [1, 64, 32, 32]   # 256 KiB: pooled
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Reshape", ["r", "flat"], ["rv"]),
             helper.make_node("ReduceMax", ["rv"], ["m"], keepdims=1),
             helper.make_node("Add", ["x", "m"], ["t"]),
             helper.make_node("Reshape", ["t", "flat"], ["tv"]),
             helper.make_node("Add", ["rv", "tv"], ["y"])]
    graph = helper.make_graph(nodes, "alias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 1024])],
                              [numpy_helper.from_array(np.array([64, 1024], np.int64), "flat")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ops_native.InferenceSession(model)
    sess.enable_profiling(profiled)
    assert [n.op_type for n in sess._plan.nodes] == ["Relu", "Reshape", "ReduceMax", "Add", "Reshape", "Add"]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    r = np.maximum(x, 0)
    want = (r + x + r.max()).reshape(64, 1024)
    for _ in range(3):   # later runs draw on buffers the earlier ones returned
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)
    assert sess._plan.pool._free, "the buffers did come back once nothing viewed them"


def test_pool_hands_back_the_most_recently_freed_fitting_buffer() -> None:
    """Reuse is LIFO among buffers of the requested size up to twice it (the hot one), never a smaller one."""
    from ops_native.ops import BufferPool

    pool = BufferPool()
    a, b = pool.empty((1 << 15,)), pool.empty((1 << 15,))           # 128 KiB each
    big = pool.empty((1 << 17,))                                     # 512 KiB
    ids = {name: x.base.ctypes.data for name, x in (("a", a), ("b", b), ("big", big))}
    pool.give(a)
    pool.give(big)
    pool.give(b)
    del a, b, big
    got = pool.empty((1 << 15,))
    assert got.ctypes.data == ids["b"]                               # last freed that fits
    got2 = pool.empty((1 << 15,))
    assert got2.ctypes.data == ids["a"]                              # big is more than 2x: skipped
    got3 = pool.empty((1 << 16,))                                    # 256 KiB: only big (2x) fits
    assert got3.ctypes.data == ids["big"] and got3.shape == (1 << 16,)
    assert pool.empty((1 << 15,)).ctypes.data not in ids.values()   # nothing free: a new buffer


def test_pool_hands_out_only_plain_numeric_buffers_from_raw_memory() -> None:
    """Object and string arrays are never made over recycled raw bytes (uninitialised object pointers
    would crash the process); numeric and bool ones of pool size are."""
    from ops_native.ops import BufferPool

    pool = BufferPool()
    objs = pool.empty((1 << 14,), object)
    assert objs.base is None and all(v is None for v in objs[:8])
    assert pool.empty((1 << 14,), "U4").base is None
    for dtype in (np.float32, np.int64, np.bool_, np.uint8):
        assert type(pool.empty((1 << 17,), dtype).base).__name__ == "_PoolBuffer"
