"""The memory plan: a slot for every value, and after which step each slot dies.

Slot 0 is the absent optional input (always None); constants come first (filled in the template), then
the graph inputs, then every node output. A slot is released after the step that reads it last, or right
after its producer when nothing reads it; constants and graph outputs are never released. Buffers of
released intermediates go back to the BufferPool (pool.pxi), so the next node usually writes into memory
its producer's input just left, still in cache; the caller's input arrays are only cleared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ops_native.ops import Node


@dataclass
class SlotPlan:
    """Where every value of the graph lives at run time."""

    slots: dict[str, int]          # value name -> slot ("" -> 0)
    template: list                 # initial slot values: constants filled, everything else None
    const_slots: set[int]
    input_slots: dict[str, int]    # graph input name -> slot
    output_slots: dict[str, int]   # graph output name -> slot (outputs nothing produces are left out)
    ins: list[tuple[int, ...]]     # per node: slot of each input
    outs: list[tuple[int, ...]]    # per node: slot of each output (0 for an unnamed optional output)
    recycle: list[tuple[int, ...]]  # per node: slots released after it whose buffers may be reused
    clear: list[tuple[int, ...]]    # per node: slots released after it that hold the caller's arrays


def plan_memory(nodes: list[Node], consts: dict[str, np.ndarray], inputs: list[str], outputs: list[str]) -> SlotPlan:
    """Slots and release points for ``nodes`` (in run order) over these constants, graph inputs and outputs."""
    slots: dict[str, int] = {"": 0}
    template: list = [None]
    used = {i for n in nodes for i in n.inputs} | set(outputs)
    for name, value in consts.items():
        if name in used:
            slots[name] = len(template)
            template.append(value)
    const_slots = set(range(1, len(template)))
    for name in inputs:
        slots[name] = len(template)
        template.append(None)
    for n in nodes:
        for o in n.outputs:
            if o and o not in slots:
                slots[o] = len(template)
                template.append(None)
    last_use: dict[int, int] = {}
    for idx, n in enumerate(nodes):
        for i in n.inputs:
            last_use[slots[i]] = idx
    keep = const_slots | {slots[o] for o in outputs if o in slots}
    caller_slots = {slots[name] for name in inputs}
    plan = SlotPlan(slots=slots, template=template, const_slots=const_slots,
                    input_slots={name: slots[name] for name in inputs},
                    output_slots={name: slots[name] for name in outputs if name in slots},
                    ins=[], outs=[], recycle=[], clear=[])
    for idx, n in enumerate(nodes):
        ins = tuple(slots[i] for i in n.inputs)
        outs = tuple(slots[o] if o else 0 for o in n.outputs)
        dying = [s for s in set(ins) if s and s not in keep and last_use.get(s) == idx]
        dying += [s for s in outs if s and s not in keep and s not in last_use]
        plan.ins.append(ins)
        plan.outs.append(outs)
        plan.recycle.append(tuple(s for s in dying if s not in caller_slots))
        plan.clear.append(tuple(s for s in dying if s in caller_slots))
    return plan
