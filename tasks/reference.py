"""Backups made by the reference guide's own script, read as if they were ours.

The guide's script, run on every node, writes
``archive_backup/<hostname>/<date>/<keyspace>/<table>-<id>.tbz`` (a bzip2 tar of the table's
snapshot folder, Cassandra's ``schema.cql`` inside) for *every* keyspace, system ones included.
On Cassandra 4.1 it always leaves empty 14-byte archives too: ``tar`` finds no snapshot folder for
``system/_paxos_repair_state`` nor for the folders that tables dropped earlier leave behind.

From the ``archive_backup`` root, one host folder or one date folder we build an in-memory
manifest of the keyspaces asked for only (sizes, SHA-256, raw sizes and the schema read now, in one
pass over each archive), so the restore flow validates and loads it like a backup of ours, with
sstableloader. Everything else is a line in the plan: system keyspaces, keyspaces not asked for,
empty archives. A damaged archive the restore needs is a refusal naming it.

Coverage: with a replication factor RF, each row is on RF hosts; when fewer than RF hosts' archives
are missing every row still has a copy. Otherwise rows would be lost, and the restore is refused
(before anything is changed) naming the missing hosts, unless ``allow_partial``. A host folder is
the node's ``$(hostname)``: it is matched to the stack's Cassandra node whose name or address it
is, or whose name has the same first DNS label (``cass1.example.org`` ↔ ``cass1``).
"""
from __future__ import annotations

import bz2
import hashlib
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, cast

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from config.model import CQL_IDENTIFIER, NAME, Stack
from tasks.archive import UnsafeArchive, check_member
from tasks.coverage import coverage
from tasks.manifest import Manifest, ObjectEntry, utcnow

SUFFIXES = (".tbz", ".tar.bz2", ".tbz2")
#: Never restored from a guide backup. 5.0.9 has no others (its SchemaConstants); the last three
#: are those of 5.1/trunk (transactional metadata, Accord, metrics), so a newer node's archives
#: are skipped too.
SYSTEM_KEYSPACES = frozenset({
    "system", "system_schema", "system_auth", "system_distributed", "system_traces",
    "system_views", "system_virtual_schema",
    "system_cluster_metadata", "system_accord", "system_metrics",
})
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
CHUNK = 1 << 20


# -- the folder tree ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Archive:
    """One ``.tbz`` of the guide's tree; ``key`` is its path relative to the folder given."""

    host: str
    keyspace: str
    table_dir: str
    path: Path
    key: str

    @property
    def table(self) -> str:
        name, _, ident = self.table_dir.rpartition("-")
        return name if name and re.fullmatch(r"[0-9a-f]{32}", ident) else self.table_dir


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _is_archive(p: Path) -> bool:
    return p.is_file() and p.name.endswith(SUFFIXES)


def _has_archives(folder: Path, depth: int) -> bool:
    """Whether archives sit ``depth`` folders below ``folder`` (1: a date folder)."""
    return any(_is_archive(p) for p in folder.glob("/".join(["*"] * (depth + 1))))


def resolve_dates(folder: str | Path, date: str = "") -> tuple[dict[str, Path], str, list[str]]:
    """The date folder of every host under ``folder`` (the ``archive_backup`` root, a host folder
    or a date folder), for ``date`` or else the newest date; with the lines that say so."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"reference backup folder {folder} does not exist")
    if date and not NAME.match(date):
        raise ValueError(f"reference_date {date!r} is not a folder name")
    if _has_archives(folder, 1):  # a date folder
        if date and date != folder.name:
            raise ValueError(f"{folder} is the date folder {folder.name}, not {date}")
        return {folder.resolve().parent.name: folder}, folder.name, [
            f"date folder {folder.name} of host {folder.resolve().parent.name}"]
    if _has_archives(folder, 2):  # a host folder
        hosts = {folder.resolve().name: folder}
    elif _has_archives(folder, 3):  # the archive_backup root
        hosts = {h.name: h for h in _subdirs(folder) if _has_archives(h, 2)}
    else:
        raise FileNotFoundError(f"{folder}: no <host>/<date>/<keyspace>/<table>.tbz archive found")
    dates = {h: [d.name for d in _subdirs(p) if _has_archives(d, 1)] for h, p in hosts.items()}
    every = sorted({d for ds in dates.values() for d in ds})
    if not date:
        iso = [d for d in every if ISO_DATE.match(d)]
        if len(every) > 1 and not iso:
            raise ValueError(f"cannot tell the newest of the date folders {every}: name one with "
                             "reference_date")
        date = max(iso) if iso else every[0]
    elif date not in every:
        raise FileNotFoundError(f"{folder}: no host has a date folder {date!r} (found: {every})")
    notes = [f"date {date}" + (f" (newest of {', '.join(every)})" if len(every) > 1 else "")]
    chosen = {}
    for host, path in hosts.items():
        if date in dates[host]:
            chosen[host] = path / date
        else:
            notes.append(f"host folder {host} has no {date} folder (it has {dates[host]}): "
                         "none of its archives is used")
    return chosen, date, notes


def find_archives(base: Path, dates: dict[str, Path]) -> list[Archive]:
    found = []
    for host, date_dir in sorted(dates.items()):
        for ks_dir in _subdirs(date_dir):
            for p in sorted(ks_dir.iterdir()):
                if _is_archive(p):
                    table_dir = p.name
                    for suffix in SUFFIXES:
                        table_dir = table_dir.removesuffix(suffix)
                    found.append(Archive(host, ks_dir.name, table_dir, p,
                                         p.relative_to(base).as_posix()))
    return found


# -- one archive -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveInfo:
    state: Literal["ok", "empty", "damaged"]
    size: int
    sha256: str
    raw_size: int = 0
    files: int = 0
    schema: str = ""
    reason: str = ""


class _Hashing:
    """A reader that hashes and counts what passes through it."""

    def __init__(self, f):
        self.f, self.sha, self.count = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data


def inspect_archive(path: Path) -> ArchiveInfo:
    """Hash the file and read the bzip2 tar to its end in one pass: empty (no file in it: the
    guide's tar found no snapshot folder), damaged (not bzip2, truncated, corrupt, unsafe
    member), or ok with its raw size and ``schema.cql``."""
    with open(path, "rb") as f:
        raw = _Hashing(f)
        plain = _Hashing(bz2.BZ2File(cast(BinaryIO, raw)))
        state: Literal["ok", "empty", "damaged"] = "ok"
        reason, files, raw_size, schema = "", 0, 0, ""
        try:
            try:
                with tarfile.open(fileobj=cast(BinaryIO, plain), mode="r|") as tar:
                    for member in tar:
                        check_member(member)
                        if not member.isfile():
                            continue
                        files += 1
                        raw_size += member.size
                        data = tar.extractfile(member)
                        assert data is not None  # a regular file
                        if member.name.lstrip("./") == "schema.cql":
                            schema = data.read().decode()
                        while data.read(CHUNK):
                            pass
            except tarfile.ReadError as exc:
                if str(exc) != "empty file":
                    raise
            while plain.read(CHUNK):  # the rest of the bzip2 stream: truncation shows here
                pass
            if files == 0:
                state, reason = "empty", "holds no file"
        except EOFError:
            state, reason = "damaged", ("truncated (the bzip2 stream ends too early)" if raw.count
                                        else "0 bytes, not even a bzip2 header")
        except UnsafeArchive as exc:
            state, reason = "damaged", f"unsafe archive: {exc}"
        except (OSError, tarfile.TarError) as exc:
            state, reason = "damaged", f"corrupt, or not a bzip2 tar ({exc})"
        while raw.read(CHUNK):
            pass
    return ArchiveInfo(state, raw.count, raw.sha.hexdigest(), raw_size, files, schema, reason)


# -- the whole backup --------------------------------------------------------------------------

@dataclass
class ReferenceBackup:
    manifest: Manifest | None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def plan_reference(folder: str | Path, keyspaces: list[str], *, date: str = "",
                   nodes: dict[str, str] | None = None, node_dcs: dict[str, str | None] | None = None,
                   replications: dict[str, dict] | None = None, allow_partial: bool = False,
                   workers: int = 4) -> ReferenceBackup:
    """The manifest of ``keyspaces`` in a guide-made backup, the plan's lines, and every reason
    to refuse. Coverage is checked when ``nodes`` (name → address) is given, with ``node_dcs``
    (name → data center or None) and ``replications`` (keyspace → replication map)."""
    base = Path(folder)
    try:
        dates, date, notes = resolve_dates(base, date)
    except (OSError, ValueError) as exc:
        return ReferenceBackup(None, [], [str(exc)])
    archives = find_archives(base, dates)
    problems = [f"keyspace {ks} is a system keyspace: a guide backup's system keyspaces are never "
                "restored" for ks in keyspaces if ks in SYSTEM_KEYSPACES]
    found = sorted({a.keyspace for a in archives})
    for ks in found:
        count = sum(1 for a in archives if a.keyspace == ks)
        hosts = len({a.host for a in archives if a.keyspace == ks})
        if ks in SYSTEM_KEYSPACES:
            notes.append(f"skipped system keyspace {ks} ({count} archives from {hosts} host(s))")
        elif ks not in keyspaces:
            notes.append(f"skipped keyspace {ks} ({count} archives from {hosts} host(s)): not asked "
                         f"for (keyspace={ks!r} restores it); not read")
    problems += [f"{base}: no archive of keyspace {ks} (keyspaces found: {', '.join(found)})"
                 for ks in keyspaces if ks not in found and ks not in SYSTEM_KEYSPACES]
    wanted = [a for a in archives if a.keyspace in keyspaces and a.keyspace not in SYSTEM_KEYSPACES]
    problems += [f"host folder {h!r} is not a plain host name" for h in dates if not NAME.match(h)]
    with ThreadPoolExecutor(workers) as pool:
        infos = list(pool.map(lambda a: inspect_archive(a.path), wanted))
    objects: list[ObjectEntry] = []
    schemas: dict[str, dict[str, str]] = {}
    table_hosts: dict[str, dict[str, set[str]]] = {}
    for a, info in zip(wanted, infos, strict=True):
        if info.state == "empty":
            notes.append(f"skipped empty archive {a.key} ({info.size} bytes, {info.reason}: no "
                         "snapshot of that table folder, e.g. a table dropped earlier)")
            continue
        if info.state == "damaged":
            problems.append(f"archive {a.key} is damaged: {info.reason}")
            continue
        if not CQL_IDENTIFIER.match(a.table):
            problems.append(f"archive {a.key}: cannot tell a table name from {a.table_dir!r}")
            continue
        objects.append(ObjectEntry(
            key=a.key, size=info.size, sha256=info.sha256, component="cassandra", node=a.host,
            keyspace=a.keyspace, table=a.table, table_dir=a.table_dir, compression="bzip2",
            raw_size=info.raw_size, files=info.files))
        table_hosts.setdefault(a.keyspace, {}).setdefault(a.table, set()).add(a.host)
        parts = schemas.setdefault(a.keyspace, {})
        if info.schema and a.table not in parts:
            parts[a.table] = info.schema.strip().rstrip(";") + ";"
    if nodes is not None:
        notes_, problems_ = coverage(table_hosts, list(dates), nodes, node_dcs or {},
                                     replications or {}, allow_partial)
        notes += notes_
        problems += problems_
    if problems or not objects:
        return ReferenceBackup(None, notes, problems or [f"{base}: no archive to restore"])
    now = utcnow()
    manifest = Manifest(
        backup_id=f"reference-{date}", kind="cold", stack="reference", started_at=now,
        finished_at=now, components=["cassandra"], objects=objects, label=str(base),
        cassandra={"keyspaces": {ks: {"schema_cql": "\n".join(parts.values()),
                                      "tables": {t: "" for t in parts}}
                                 for ks, parts in schemas.items()},
                   "nodes": []},  # no recorded topology: sstableloader routes every row afresh
    )
    return ReferenceBackup(manifest, notes, [])


def live_view(stack: Stack, keyspaces: list[str]) -> tuple[dict[str, str | None], dict[str, dict]]:
    """Each Cassandra node's data center (by address, from the driver) and the replication of
    each keyspace: the live keyspace's, else the stack file's ``cassandra.replication``."""
    from tasks.cassandra import cql_session

    with cql_session(stack) as session:
        session.cluster.refresh_nodes()
        by_address = {str(h.broadcast_address or h.address): h.datacenter
                      for h in session.cluster.metadata.all_hosts()}
        replications = {}
        for ks in keyspaces:
            row = session.execute("SELECT replication FROM system_schema.keyspaces "
                                  "WHERE keyspace_name = %s", [ks]).one()
            replications[ks] = dict(row.replication) if row else dict(stack.cassandra.replication)
    return ({n.name: by_address.get(n.address) for n in stack.nodes_with("cassandra")},
            replications)


def load_reference(stack: Stack, folder: str, keyspace: str | None = None, date: str = "",
                   allow_partial: bool = False) -> ReferenceBackup:
    """A guide-made backup of ``keyspace`` (default: the stack's keyspaces), proved readable and
    complete enough before anything is changed."""
    keyspaces = [keyspace] if keyspace else list(stack.cassandra.keyspaces)
    try:
        node_dcs, replications = live_view(stack, keyspaces)
    except Exception as exc:
        return ReferenceBackup(None, [], [f"cannot read the live cluster's replication: {exc}"])
    nodes = {n.name: n.address for n in stack.nodes_with("cassandra")}
    return plan_reference(folder, keyspaces, date=date, nodes=nodes, node_dcs=node_dcs,
                          replications=replications, allow_partial=allow_partial)


@task(name="read reference backup", task_run_name="read reference backup {folder}",
      cache_policy=NO_CACHE)
def load_reference_task(stack: Stack, folder: str, keyspace: str | None = None, date: str = "",
                        allow_partial: bool = False) -> ReferenceBackup:
    ref = load_reference(stack, folder, keyspace, date, allow_partial)
    logger = get_run_logger()
    for line in ref.notes:
        logger.info("%s", line)
    return ref


def reference_manifest(folder: str | Path, keyspaces: list[str] | None = None,
                       date: str = "") -> Manifest:
    """The manifest alone, without the coverage proof (every non-system keyspace by default)."""
    if keyspaces is None:
        dates, _, _ = resolve_dates(folder, date)
        keyspaces = sorted({a.keyspace for a in find_archives(Path(folder), dates)} - SYSTEM_KEYSPACES)
    ref = plan_reference(folder, keyspaces, date=date)
    if ref.manifest is None:
        raise ValueError("; ".join(ref.problems))
    return ref.manifest
