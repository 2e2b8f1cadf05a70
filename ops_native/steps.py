"""A compiled step: one node bound to its callable and to the value slots it reads, writes and releases.

The executor keeps every value in a flat list indexed by slot (ops_native.memory assigns them). Running a
step is: ``outs <- fn([values[s] for s in ins])``, then release the slots whose last use this was:
``recycle`` slots hand their buffer back to the BufferPool, ``clear`` slots (the caller's input arrays,
which must never be reused) are only emptied. Two run loops read steps: ``_core.run_steps`` (Cython, the
normal path; executor.pxi) and InferenceSession's profiling loop (with ``release`` below).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Step(NamedTuple):
    """One node of the plan. A NamedTuple so that the Cython run loop reads its fields by index, as fast as
    the plain tuple it replaces (field order is part of the contract with executor.pxi)."""

    fn: Callable[[list], list]  # fn(input values) -> output values; a _core.NativeStep runs without a Python call
    ins: tuple[int, ...]        # slot of each input (0: an absent optional input, always None)
    outs: tuple[int, ...]       # slot of each output (0: an output nobody reads, dropped)
    recycle: tuple[int, ...]    # slots that die here; their buffers go back to the pool
    clear: tuple[int, ...]      # slots that die here holding the caller's arrays: emptied, never recycled


def release(step: Step, values: list, pool: Any) -> None:
    """Empty the slots that die after ``step``, handing recycled buffers to ``pool`` (ops.BufferPool)."""
    for s in step.recycle:
        v, values[s] = values[s], None
        if v is not None:
            pool.give(v)
        v = None
    for s in step.clear:
        values[s] = None

