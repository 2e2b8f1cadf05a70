"""Emulated devices get their quota on a busy machine: CPU weights of the lab's cgroups (real cgroups, root)."""

from __future__ import annotations

import os

import pytest

from edge_agent.lab import cgroups


def _layout() -> cgroups.CgroupLayout:
    if os.geteuid() != 0:
        pytest.skip("cgroups need root")
    try:
        return cgroups.detect()
    except cgroups.CgroupUnavailable as exc:
        pytest.skip(f"no writable cgroups here: {exc}")


def _weight(d, version: int) -> int:
    return int((d / ("cpu.shares" if version == 1 else "cpu.weight")).read_text())


def test_device_groups_weigh_by_quota_and_the_lab_parent_outweighs_ordinary_tasks():
    layout = _layout()
    slow = cgroups.create("weights-slow", cpu=0.2, layout=layout)
    fast = cgroups.create("weights-fast", cpu=0.6, layout=layout)
    try:
        v = layout.version
        ws, wf = _weight(slow.dirs[0], v), _weight(fast.dirs[0], v)
        # inside the parent, devices that compete split its CPU by their quotas (3:1 here)
        assert wf == pytest.approx(3 * ws, rel=0.02)
        # the parent is one scheduling entity beside every task of the machine: it must weigh many tasks,
        # or a fleet of devices gets one task's share of a busy machine
        default = 1024 if v == 1 else 100
        assert _weight(slow.dirs[0].parent, v) == default * cgroups.PARENT_WEIGHT_TASKS
        assert slow.dirs[0].parent == fast.dirs[0].parent
    finally:
        slow.remove()
        fast.remove()
    assert slow.dirs == [] and fast.dirs == []
