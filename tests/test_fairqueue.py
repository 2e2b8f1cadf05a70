"""The receivers' per-sender fairness (edge_agent.transport.fairqueue): turns, and the largest backlog shed first."""

from __future__ import annotations

import logging
import threading

import pytest

from edge_agent.transport.fairqueue import FairQueue, Full, ShedLog


def test_senders_are_served_in_turns_not_in_arrival_order() -> None:
    q: FairQueue[str] = FairQueue(100)
    for i in range(5):
        q.put("flood", f"f{i}")
    q.put("op", "o0")
    q.put("op", "o1")
    assert [q.get(0) for _ in range(7)] == ["f0", "o0", "f1", "o1", "f2", "f3", "f4"]
    assert q.get(0) is None and q.qsize() == 0


def test_a_lone_sender_keeps_the_whole_bound() -> None:
    q: FairQueue[int] = FairQueue(4)
    for i in range(4):
        assert q.put("op", i) is None
    with pytest.raises(Full):
        q.put("op", 4)
    assert q.shed["op"] == 1 and q.qsize() == 4


def test_a_full_queue_sheds_the_newest_item_of_the_largest_backlog_for_a_smaller_sender() -> None:
    q: FairQueue[str] = FairQueue(4)
    for i in range(4):
        q.put("flood", f"f{i}")
    assert q.put("op", "o0") == ("flood", "f3")
    assert q.put("op", "o1") == ("flood", "f2")
    with pytest.raises(Full):            # now 2 and 2: neither may push the other out
        q.put("op", "o2")
    with pytest.raises(Full):
        q.put("flood", "f9")
    assert q.backlog("flood") == 2 and q.backlog("op") == 2
    assert q.shed == {"flood": 3, "op": 1}


def test_get_blocks_until_an_item_or_close() -> None:
    q: FairQueue[str] = FairQueue(2)
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    q.put("a", "x")
    t.join(5)
    assert got == ["x"]
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    q.close()
    t.join(5)
    assert got == ["x", None]


def test_shed_log_reports_once_per_interval_with_the_count(caplog) -> None:
    log = ShedLog(logging.getLogger("test.shed"), "requests", every_s=3600)
    with caplog.at_level(logging.WARNING, "test.shed"):
        for _ in range(500):
            log.note("gw-01", "queue full")
        log.note("cam-02", "queue full")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "'gw-01'" in lines[0] and "'cam-02'" in lines[1], lines
