"""The node side of a node rebuild: folders moved aside under a journal, table archives unpacked
into the data folder, the start watched, the node checked, and every step undoable.

The journal is tasks/restore_folders.py's (``<path>.restoring-<key>.json`` beside each folder, the
previous contents at ``<path>.before-<key>``, key ``rebuild-<UTC time>``): ``put_back`` undoes a
folder whatever phase it reached, and a rerun after a crash finds the journals and finishes.
Everything in a folder after its journal says "moved" was put there by the rebuild, so emptying it
again on a rerun never deletes the node's own data.
"""
from __future__ import annotations

import posixpath
import time
from dataclasses import replace
from datetime import UTC, datetime

from cassandra import ConsistencyLevel
from cassandra.query import SimpleStatement

from config.model import Stack, cql_identifier
from tasks import cassandra
from tasks.archive import TarStats
from tasks.hosts import Host, host_for
from tasks.manifest import ObjectEntry
from tasks.parts_stream import table_tar
from tasks.rebuild_plan import NodeFolder, table_folder
from tasks.repositories import Repository, open_repository
from tasks.restore_folders import (
    Journal,
    _exists,
    _move_contents,
    plan_folder,
    read_journal,
    write_journal,
)
from tasks.retry import side_effect_task
from tasks.services import ServiceError, is_running

KEY_PREFIX = "rebuild-"
#: Files of a snapshot folder that are not table data (Cassandra writes them beside the links).
SNAPSHOT_EXTRAS = ("manifest.json", "schema.cql")


class RebuildError(RuntimeError):
    """A rebuild step failed; the flow puts the node back."""

    transient = False


def new_key(now: datetime | None = None) -> str:
    return KEY_PREFIX + (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")


def key_of_journal(folder: str, journal_name: str) -> str | None:
    """``rebuild-…`` from ``<folder name>.restoring-rebuild-….json``, else None."""
    head = posixpath.basename(folder.rstrip("/")) + ".restoring-"
    if journal_name.startswith(head + KEY_PREFIX) and journal_name.endswith(".json"):
        return journal_name[len(head):-len(".json")]
    return None


def unfinished_key(stack: Stack, node: str, folders: list[NodeFolder]) -> str | None:
    """The key of a rebuild of this node that did not finish (its journals are still there)."""
    keys = set()
    with host_for(stack, node) as host:
        for f in folders:
            parent, base = posixpath.split(f.path.rstrip("/"))
            out = host.run(host.privileged(["find", parent or "/", "-mindepth", "1", "-maxdepth", "1", "-name",
                            f"{base}.restoring-{KEY_PREFIX}*.json"]), timeout=60, check=False)
            keys |= {k for p in out.text.split() if (k := key_of_journal(f.path, posixpath.basename(p)))}
    if len(keys) > 1:
        raise RebuildError(f"{node}: journals of several rebuilds ({', '.join(sorted(keys))}); "
                           "put the folders back by hand")
    return next(iter(keys), None)


def plan_folders(stack: Stack, node: str, folders: list[NodeFolder], key: str) -> list[Journal]:
    """Each folder's journal: the one an unfinished run left, else a new plan (not written yet)."""
    journals = []
    for f in folders:
        j = read_journal(stack, node, f.path, key)
        if j is None:
            planned = plan_folder(stack, node, f.path, key, wipe=True)
            if isinstance(planned, str):
                raise RebuildError(planned)
            j = planned
        journals.append(j)
    return journals


def move_aside(stack: Stack, journal: Journal) -> Journal:
    """Move one folder's contents aside (idempotent: a rerun completes a half-done move) and
    record it; folders that were empty or missing are only recorded."""
    j = journal
    if j.phase != "planned":
        return j
    write_journal(stack, j)
    if j.before == "non-empty" and j.aside:
        with host_for(stack, j.node) as host:
            if not _exists(host, j.aside):
                mv = host.run(host.privileged(["mv", "-T", "--", j.path, j.aside]), timeout=600, check=False)
                if mv.exit_code != 0:
                    host.run(host.privileged(["mkdir", "--", j.aside]), timeout=60)  # a mount point: move what it holds
                    _move_contents(host, j.path, j.aside)
            elif _exists(host, j.path):
                _move_contents(host, j.path, j.aside)  # interrupted while moving a mount point's files
    moved = replace(j, phase="moved")
    write_journal(stack, moved)
    return moved


def owner_for(stack: Stack, node: str, journals: list[Journal]) -> str:
    """The configured owner, else the data folder's (or, when it is gone, its parent's)."""
    configured = stack.cassandra.settings_for(node).owner
    if configured:
        return configured
    data = journals[0]
    if data.owner_mode:
        uid, gid, _ = data.owner_mode.split(":")
        return f"{uid}:{gid}"
    with host_for(stack, node) as host:
        return host.run(host.privileged(["stat", "-c", "%u:%g", "--", posixpath.dirname(data.path.rstrip("/"))]),
                        timeout=60).text.strip()


def reset_folder(stack: Stack, journal: Journal, owner: str) -> None:
    """An empty folder where the moved one was, with its owner and mode (what is in it now was
    put there by this rebuild: the journal says the original is aside)."""
    j = journal
    if j.phase != "moved":
        raise RebuildError(f"{j.node}:{j.path}: not moved aside yet")
    with host_for(stack, j.node) as host:
        host.run(host.privileged(["mkdir", "-p", "--", j.path]), timeout=60)
        host.run(host.privileged(["find", j.path, "-mindepth", "1", "-maxdepth", "1",
                                  "-exec", "rm", "-rf", "--", "{}", "+"]),
                 timeout=3600)
        if j.owner_mode:  # as it was
            uid, gid, mode = j.owner_mode.split(":")
            host.run(host.privileged(["chown", f"{uid}:{gid}", "--", j.path]), timeout=60)
            host.run(host.privileged(["chmod", mode, "--", j.path]), timeout=60)
        else:
            host.run(host.privileged(["chown", owner, "--", j.path]), timeout=60)


def make_table_folders(stack: Stack, node: str, entries: list[ObjectEntry]) -> None:
    """Every table folder at once (one command, not one per table)."""
    settings = stack.cassandra.settings_for(node)
    with host_for(stack, node) as host:
        host.run(host.privileged(["mkdir", "-p", "--", *sorted({table_folder(settings, e) for e in entries})]),
                 timeout=300)


def unpack_table(stack: Stack, repo: Repository, node: str, entry: ObjectEntry) -> int:
    """Stream one table archive into its (existing) table folder, members checked on the way;
    return the number of files."""
    folder = table_folder(stack.cassandra.settings_for(node), entry)
    stats = TarStats()
    with host_for(stack, node) as host, table_tar(repo, entry, stats) as stream:  # archive or components
        host.stream_to(host.privileged(["tar", "-xf", "-", "-C", folder, "--no-same-owner"]),
                       stream, timeout=3600)
    if entry.files is not None and stats.files != entry.files:
        raise RebuildError(f"{entry.key}: unpacked {stats.files} files, the manifest lists {entry.files}")
    return stats.files


def drop_snapshot_extras(stack: Stack, node: str) -> None:
    """Remove the snapshot's own files (``manifest.json``, ``schema.cql``) from the table folders:
    not table data. Only in ``<data>/<keyspace>/<table>/``, which the rebuild filled itself."""
    names: list[str] = []
    for n in SNAPSHOT_EXTRAS:
        names += ["-o", "-name", n] if names else ["-name", n]
    settings = stack.cassandra.settings_for(node)
    with host_for(stack, node) as host:
        host.run(host.privileged(["find", settings.data_dirs[0], "-mindepth", "3", "-maxdepth", "3", "-type", "f",
                  "(", *names, ")", "-delete"]), timeout=600)


def give_to_owner(stack: Stack, node: str, paths: list[str], owner: str) -> None:
    with host_for(stack, node) as host:
        host.run(host.privileged(["chown", "-R", owner, "--", *paths]), timeout=3600)


def commitlog_files(stack: Stack, node: str) -> list[str]:
    path = stack.cassandra.settings_for(node).commitlog_dir
    with host_for(stack, node) as host:
        return host.run(host.privileged(["find", path, "-mindepth", "1", "-type", "f"]), timeout=60,
                        check=False).text.split()


def log_size(stack: Stack, node: str) -> int | None:
    """The size of the node's log now (where "Startup complete" is looked for after the start), or
    None when the stack names no log file or it is not there."""
    log = stack.cassandra.settings_for(node).log_file
    if not log:
        return None
    with host_for(stack, node) as host:
        r = host.run(host.privileged(["stat", "-c", "%s", "--", log]), timeout=60, check=False)
    return int(r.text.strip()) if r.exit_code == 0 else None


def _logged_since(host: Host, log: str, offset: int, text: bytes) -> bool:
    size = host.run(host.privileged(["stat", "-c", "%s", "--", log]), timeout=60, check=False).text.strip()
    start = offset if size.isdigit() and int(size) >= offset else 0  # rotated: the new file
    tail = host.run(host.privileged(["tail", "-c", f"+{start + 1}", "--", log]), timeout=120, check=False)
    return text in tail.stdout


def wait_startup_complete(stack: Stack, node: str, offset: int | None, timeout: float) -> bool:
    """Wait for "Startup complete" in the node's log after ``offset``; False when there is no log
    to read (the check is skipped); raise when the node stops or the time runs out."""
    log = stack.cassandra.settings_for(node).log_file
    if offset is None or not log:
        return False
    svc = stack.service("cassandra")
    deadline = time.monotonic() + timeout
    with host_for(stack, node) as host:
        while not _logged_since(host, log, offset, b"Startup complete"):
            if svc is not None and not is_running(host, svc, node):
                raise RebuildError(f"cassandra on {node} stopped before logging 'Startup complete'")
            if time.monotonic() > deadline:
                raise RebuildError(f"{node}: no 'Startup complete' in {log} after {timeout:.0f}s")
            time.sleep(2)
    return True


def check_node(stack: Stack, node: str, host_id: str | None, tables: dict[str, list[str]]) -> dict:
    """Through the node alone: its host id is the backed-up one, and every table answers a read
    at LOCAL_ONE."""
    address = stack.node(node).address
    with cassandra.cql_session(stack, contact_points=[address], timeout=60) as session:
        local = session.execute(SimpleStatement("SELECT host_id FROM system.local",
                                                consistency_level=ConsistencyLevel.LOCAL_ONE)).one()
        found = str(local.host_id) if local else None
        if host_id and found != host_id:
            raise RebuildError(f"{node} came back with host id {found}, the backup's is {host_id}")
        reads = 0
        for ks, names in tables.items():
            for t in names:
                stmt = f"SELECT * FROM {cql_identifier(ks)}.{cql_identifier(t)} LIMIT 1"
                session.execute(SimpleStatement(stmt, consistency_level=ConsistencyLevel.LOCAL_ONE))
                reads += 1
    return {"host_id": found, "reads": reads}


def live_replication(stack: Stack, node: str) -> dict[str, dict[str, str]]:
    address = stack.node(node).address
    with cassandra.cql_session(stack, contact_points=[address]) as session:
        rows = session.execute("SELECT keyspace_name, replication FROM system_schema.keyspaces")
        return {r.keyspace_name: dict(r.replication) for r in rows}


def repair(stack: Stack, node: str) -> str:
    with host_for(stack, node) as host:
        return cassandra.nodetool(host, stack.cassandra.settings_for(node), "repair", "--full",
                                  timeout=6 * 3600)[-2000:]


def ensure_stopped(stack: Stack, node: str) -> None:
    svc = stack.service("cassandra")
    if svc is None:
        raise ServiceError("the stack declares no cassandra service")
    with host_for(stack, node) as host:
        if is_running(host, svc, node):
            raise RebuildError(f"cassandra still runs on {node}")


# -- Prefect tasks -----------------------------------------------------------------------------
@side_effect_task(name="move folder aside", task_run_name="move aside {journal.node}:{journal.path}",
                  retry=False)
def move_aside_task(stack: Stack, journal: Journal) -> Journal:
    return move_aside(stack, journal)


@side_effect_task(name="empty folder", task_run_name="empty {journal.node}:{journal.path}", retry=False)
def reset_folder_task(stack: Stack, journal: Journal, owner: str) -> None:
    reset_folder(stack, journal, owner)


@side_effect_task(name="unpack table", task_run_name="unpack {entry.keyspace}.{entry.table} on {node}",
                  retry=False)
def unpack_table_task(stack: Stack, node: str, entry: ObjectEntry) -> int:
    with open_repository(stack) as repo:
        return unpack_table(stack, repo, node, entry)


@side_effect_task(name="prepare table folders", task_run_name="table folders on {node}")
def make_table_folders_task(stack: Stack, node: str, entries: list[ObjectEntry]) -> None:
    make_table_folders(stack, node, entries)


@side_effect_task(name="drop snapshot files", task_run_name="drop snapshot files on {node}")
def drop_snapshot_extras_task(stack: Stack, node: str) -> None:
    drop_snapshot_extras(stack, node)


@side_effect_task(name="chown", task_run_name="chown {owner} on {node}")
def give_to_owner_task(stack: Stack, node: str, paths: list[str], owner: str) -> None:
    give_to_owner(stack, node, paths, owner)


@side_effect_task(name="nodetool repair", task_run_name="repair {node}", retry=False)
def repair_task(stack: Stack, node: str) -> str:
    return repair(stack, node)
