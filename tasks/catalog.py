"""The catalog: which backups a repository holds, from their manifests alone, and what in it is
not ours.

Plain code (no tasks): the list, prune, restore and verify flows, the demo and the CLI call it.
A repository is shared ground: an operator may drop a README at the top, another tool a folder,
a copy a file with a space in its name into an old backup. Such objects are *reported and
skipped*: the catalog lists them apart, prune never deletes them (it did not write them) and
never fails because of them.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from tasks import layout
from tasks.content_store import manifest_parts
from tasks.manifest import Manifest, ManifestError, read_manifest
from tasks.repositories import Repository, RepositoryError
from tasks.repositories.base import validate_key
from tasks.repositories.crypto import EncryptionError, KeyUnavailable


def mib(n: float) -> float:
    return round(n / 2**20, 2)


@dataclass
class Catalog:
    rows: list[dict]  # one per backup id, newest first
    foreign: list[str] = field(default_factory=list)  # keys outside our backup folders
    junk: dict[str, list[str]] = field(default_factory=dict)  # backup id -> names we never write
    no_key: dict[str, KeyUnavailable] = field(default_factory=dict)  # backup id -> under a key not given

    def notes(self) -> list[str]:
        """One line per kind of stranger, for logs and reports."""
        lines = []
        if self.foreign:
            lines.append(f"{len(self.foreign)} object(s) outside this tool's backup folders, skipped: "
                         f"{', '.join(self.foreign[:5])}{' …' if len(self.foreign) > 5 else ''}")
        for backup_id, keys in sorted(self.junk.items()):
            lines.append(f"{backup_id}: {len(keys)} object(s) with names this tool never writes, skipped "
                         f"(remove them by hand): {', '.join(keys[:5])}")
        return lines


def _ours(key: str) -> bool:
    """A name this tool writes (docs/FORMAT.md), safe to pass back to the repository."""
    try:
        validate_key(key)
    except RepositoryError:
        return False
    return layout.parse_key(key).kind != "other"


def scan(repo: Repository) -> Catalog:
    """Every backup id with its status and size; strangers apart. A backup id without a
    manifest is incomplete (a failed or killed run, or one still running)."""
    sizes: dict[str, int] = defaultdict(int)
    complete: set[str] = set()
    found = Catalog(rows=[])
    for obj in repo.list():
        backup_id = layout.backup_id_of(obj.key)
        if backup_id is None or not layout.is_backup_id(backup_id):
            if backup_id is not None or not _ours(obj.key):  # locks and probes are ours
                found.foreign.append(obj.key)
            continue
        if not _ours(obj.key):
            found.junk.setdefault(backup_id, []).append(obj.key)
            continue
        sizes[backup_id] += obj.size
        if layout.is_manifest_key(obj.key):
            complete.add(backup_id)
    for backup_id in sizes:
        row = {"id": backup_id, "kind": layout.backup_kind(backup_id), "status": "incomplete",
               "started": "", "finished": "", "components": "", "size_mib": mib(sizes[backup_id]),
               "added_mib": mib(sizes[backup_id]), "shared_mib": 0.0, "label": ""}
        if backup_id in complete:
            try:
                m = read_manifest(repo, backup_id)
                row.update(kind=m.kind, status="complete", started=m.started_at,
                           finished=m.finished_at, components=",".join(m.components),
                           size_mib=mib(m.size), label=m.label)
                row.update(component_sizes(m))
            except (ManifestError, EncryptionError) as exc:
                row["status"] = f"unreadable: {exc}"
                if isinstance(exc, KeyUnavailable):
                    found.no_key[backup_id] = exc
        found.rows.append(row)
    found.rows.sort(key=lambda r: layout.backup_sort_key(r["id"]), reverse=True)
    return found


def stored_bytes(m: Manifest) -> tuple[int, int]:
    """(all a backup needs, what it wrote itself) in bytes: its own objects plus, in incremental
    mode, every SSTable component it lists, once, those it did not write counted only in the first."""
    parts = {p.key: p for p in manifest_parts(m)}
    added = sum(p.stored_size for p in parts.values() if p.added)
    return m.size + sum(p.stored_size for p in parts.values()), m.size + added


def component_sizes(m: Manifest) -> dict[str, float]:
    """A backup's size with its shared SSTable components (incremental mode) counted in:
    ``size_mib`` all it needs, ``added_mib`` what it wrote itself, ``shared_mib`` the rest."""
    needed, added = stored_bytes(m)
    return {"size_mib": mib(needed), "added_mib": mib(added), "shared_mib": mib(needed - added)}


def catalog(repo: Repository) -> list[dict]:
    """One row per backup id, newest first."""
    return scan(repo).rows


def latest_complete(repo: Repository) -> str:
    """The newest complete backup. One under a key this stack file does not give is refused,
    not skipped: 'latest' must never quietly mean an older backup."""
    found = scan(repo)
    for row in found.rows:
        if row["id"] in found.no_key:
            raise found.no_key[row["id"]]
        if row["status"] == "complete":
            return row["id"]
    raise LookupError(f"{repo.url} holds no complete backup")


def resolve_backup_id(repo: Repository, backup_id: str) -> str:
    """'latest' (or '') means the newest complete backup; anything else is taken as given."""
    return latest_complete(repo) if backup_id in ("", "latest") else backup_id


def delete_backup_objects(repo: Repository, backup_id: str, complete: bool) -> tuple[int, list[str]]:
    """The manifest first (an interrupted prune leaves an incomplete backup, never a complete one
    with holes), then every object this tool wrote; returns how many were deleted and the names
    left in place (not ours: never deleted, reported)."""
    deleted = 0
    if complete:
        repo.delete(layout.manifest_key(backup_id))
        deleted += 1
    left = []
    for obj in list(repo.list(layout.backup_prefix(backup_id))):
        if _ours(obj.key):
            repo.delete(obj.key)
            deleted += 1
        else:
            left.append(obj.key)
    return deleted, left
