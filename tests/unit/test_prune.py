"""Retention decisions: newest complete always kept, failed runs cleaned after a grace period."""
from __future__ import annotations

from datetime import UTC, datetime

from flows.prune import backup_time, plan_prune

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def row(bid, status="complete"):
    return {"id": bid, "status": status}


ROWS = [row("hot-20261127-020000-aaaa"), row("hot-20261126-020000-bbbb"),
        row("hot-20261125-020000-cccc"), row("hot-20261120-020000-dddd"),
        row("hot-20261127-110000-eeee", "incomplete"), row("hot-20261125-090000-ffff", "incomplete")]


def test_keep_last():
    assert plan_prune(ROWS, NOW, 2, None, 24) == ["hot-20261125-020000-cccc", "hot-20261120-020000-dddd",
                                                  "hot-20261125-090000-ffff"]


def test_keep_days_or_last_whichever_keeps_more():
    assert plan_prune(ROWS, NOW, 1, 3, 24) == ["hot-20261120-020000-dddd", "hot-20261125-090000-ffff"]


def test_no_policy_keeps_every_complete_backup_and_the_newest_always():
    assert plan_prune(ROWS, NOW, None, None, 24) == ["hot-20261125-090000-ffff"]
    assert plan_prune(ROWS[3:4], NOW, 0, 0, 24) == []


def test_foreign_ids_have_no_time():
    assert backup_time("reference-2024-09-23") is None
    assert backup_time("hot-20261127-020000-aaaa") == datetime(2026, 11, 27, 2, tzinfo=UTC)
