"""ops_native.memory and ops_native.steps: slots, release points and the run loops that honour them."""

from __future__ import annotations

import numpy as np

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
