"""Prune's reference counting of the shared SSTable components (docs/FORMAT.md, "Incremental mode").

A component goes once no kept readable manifest references it. Nothing goes while a manifest is
unreadable (its references are unknown) or while an incomplete backup is younger than the grace
period: it may still be running, and its new components are referenced only by the manifest it
has not written yet (its ``started.json`` is written first, so it is seen from its first object).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from tasks import layout
from tasks.content_store import known_components
from tasks.repositories import ObjectInfo, Repository


@dataclass(frozen=True)
class ComponentSweep:
    unreferenced: list[str]
    bytes: int
    kept: int
    skipped: str = ""  # why nothing is deleted


def plan(stored: Iterable[ObjectInfo], referenced: set[str], readable: bool,
         young_incomplete: list[str]) -> ComponentSweep:
    """The pure rule: what to delete of ``stored`` given the kept references."""
    components = [o for o in stored if layout.parse_key(o.key).kind == "sstable"]
    doomed = [o for o in components if o.key not in referenced]
    skipped = ("a manifest is unreadable" if not readable else
               f"backup(s) {', '.join(young_incomplete)} may still be running" if young_incomplete else "")
    if skipped:
        return ComponentSweep([], 0, len(components), skipped)
    return ComponentSweep(sorted(o.key for o in doomed), sum(o.size for o in doomed),
                          len(components) - len(doomed))


def plan_sweep(repo: Repository, incomplete: list[str], now: datetime, grace_hours: float,
               deleted: frozenset[str] = frozenset()) -> ComponentSweep:
    """Components no complete backup (but the ``deleted`` ones) references; ``incomplete``: the
    ids of incomplete backups prune keeps."""
    known, readable = known_components(repo, deleted)
    young = [b for b in incomplete
             if (t := layout.backup_time(b)) is None or now - t < timedelta(hours=grace_hours)]
    return plan(repo.list(layout.SSTABLES_PREFIX), set(known), readable, young)


def sweep(repo: Repository, found: ComponentSweep) -> int:
    for key in found.unreferenced:
        repo.delete(key)
    return len(found.unreferenced)
