"""Unlock: show who holds the repository's lock, remove stale locks, and a live one only when told.

A lock is stale when its process on this host is gone, its Prefect flow run has ended, or it has
not been refreshed for 30 minutes (tasks/lock.py). Stale locks are removed the way a taker
breaks them (exclusive, nonce-checked), so ``unlock`` racing a new run can never remove that
run's fresh lock. Removing a live lock lets a second run write beside the first one: it needs
``force=True`` and ``confirm=True``.
"""
from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.common import resolve_stack
from tasks import layout
from tasks.layout import LOCK_KEY, LOCKS_PREFIX
from tasks.lock import BREAK_STALE_AFTER, Holder, LockError, break_lock, read_holder, stale_reason
from tasks.repositories import Repository, open_repository


def lock_rows(repo: Repository, force: bool = False, confirm: bool = False) -> list[dict]:
    """One row per lock object (and break marker), acting as ``unlock`` documents."""
    rows = []
    now = time.time()
    for obj in sorted(repo.list(LOCKS_PREFIX), key=lambda o: (o.key != LOCK_KEY, o.key)):
        row: dict = {"key": obj.key, "holder": "", "age_min": "", "refreshed_s_ago": "",
                     "stale": "", "action": "kept"}
        try:
            holder = read_holder(repo, obj.key)
        except LockError as exc:
            holder, row["stale"] = None, f"unreadable: {exc}"
        if holder is not None:
            row.update(holder=holder.describe(now), age_min=round((now - float(holder.created)) / 60, 1),
                       refreshed_s_ago=int(now - float(holder.refreshed)))
        if layout.is_break_marker(obj.key):  # a marker lives for milliseconds unless its maker died
            old = holder is None or now - float(holder.created) > BREAK_STALE_AFTER
            row["stale"] = row["stale"] or ("yes: its breaker died" if old else "no: being broken now")
            row["action"] = _remove(repo, obj.key, None, old or (force and confirm))
        elif holder is None:  # unreadable: nothing says whose it is
            row["action"] = _remove(repo, obj.key, None, force and confirm, force)
        else:
            reason = stale_reason(holder, now)
            row["stale"] = f"yes: {reason}" if reason else "no: live"
            row["action"] = _remove(repo, obj.key, holder, bool(reason) or (force and confirm), force,
                                    reason or "removed by unlock(force=True, confirm=True)")
        rows.append(row)
    return rows


def _remove(repo: Repository, key: str, holder: Holder | None, allowed: bool, force: bool = False,
            reason: str = "") -> str:
    if not allowed:
        return "kept: force=True needs confirm=True too" if force else "kept"
    if holder is None or layout.is_legacy_lock_key(key) or not holder.nonce:
        repo.delete(key)  # markers, unreadable and format-1 locks: nobody re-creates that name
        return "removed"
    return "removed" if break_lock(repo, holder, reason) else "kept: another run is removing it"


@flow(name="unlock")
def unlock(stack: str = "", force: bool = False, confirm: bool = False) -> list[dict]:
    """List the repository's locks with holder, age and whether stale (and why); remove the
    stale ones. A live lock is removed only with ``force=True`` and ``confirm=True``.

    Args:
        stack: the stack file's path; empty: $THEHIVE_BACKUP_STACK, else the Prefect Variable
            thehive-backup-stack.
        force: also remove live (and unreadable) locks — only together with confirm.
        confirm: confirm a forced removal: the run holding it keeps running unprotected.
    """
    st = resolve_stack(stack)
    with open_repository(st) as repo:
        rows = lock_rows(repo, force, confirm)
    create_table_artifact(rows or [{"key": "no lock"}], key="repository-locks",
                          description=f"locks of {st.name}")
    get_run_logger().info("%d lock object(s): %s", len(rows),
                          "; ".join(f"{r['key']} {r['stale']} → {r['action']}" for r in rows) or "none")
    return rows
