"""The way back: the live keyspace's content kept until the restored one is loaded and checked.

Before a restore drops the target keyspace it writes a *journal* on every Cassandra node and takes a
snapshot tagged ``rb-<hash of the keyspace name>`` (hard links: instant, no extra space until the
drop). If a later step fails, ``put_back`` recreates the keyspace with the replication and schema
recorded in the journal and imports the snapshot's SSTables again (from hard-linked copies, so the
snapshot stays whole until the rollback has succeeded).

The journal (``<staging_dir>/thb-rollback-<hash>.json``) is what makes a killed restore resumable:

- ``snapshotted: false`` — nothing live has changed yet (the drop comes after the flag is set);
- ``snapshotted: true``  — the keyspace may be dropped or partly loaded: its previous content lives
  only in the ``rb-`` snapshot, which a re-run must never replace with a snapshot of partial data.

Journal and snapshot are removed only once a restore or a rollback has completed.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from config.model import Stack, cql_identifier
from tasks.cassandra import (
    CassandraError,
    cql_session,
    find_table_snapshots,
    keyspace_schema,
    nodetool,
    schema_session,
)
from tasks.cassandra_restore import leftover_sstables, rewrite_schema
from tasks.hosts import host_for
from tasks.retry import side_effect_task
from tasks.staging import short_hash


def rollback_tag(target: str) -> str:
    """Snapshot tag of the keyspace's pre-restore content (never cleared by backups)."""
    return f"rb-{short_hash(target.lower(), 10)}"


def journal_path(stack: Stack, node: str, target: str) -> str:
    staging_dir = stack.cassandra.settings_for(node).staging_dir
    return posixpath.join(staging_dir, f"thb-rollback-{short_hash(target.lower(), 8)}.json")


@dataclass
class Journal:
    """What a rollback needs, recorded before the first live change."""

    target: str
    backup_id: str
    existed: bool
    replication: dict
    schema_cql: str
    snapshotted: bool = False

    def dump(self) -> bytes:
        return json.dumps(self.__dict__).encode()


#: tasks/hosts.write_file (a temporary name, then a rename) in a folder it first creates
WRITE_JOURNAL = 'mkdir -p -- "$2" && cat > "$1.tmp" && mv -f "$1.tmp" "$1"'


def write_journal(stack: Stack, journal: Journal) -> None:
    """Written on every Cassandra node (all at once), atomically: losing one node must not lose
    the way back. Raises if any node's copy failed."""
    def write(node: str) -> None:
        path = journal_path(stack, node, journal.target)
        with host_for(stack, node) as host:  # one command: the folder, then write_file's steps
            host.stream_to(host.privileged(["sh", "-c", WRITE_JOURNAL, "sh", path, posixpath.dirname(path)]),
                           [journal.dump()], timeout=60)

    on_every_node(stack, write)


def on_every_node(stack: Stack, step: Callable[[str], None]) -> None:
    """``step`` on every Cassandra node at once; the first failure is raised after all ended."""
    names = [n.name for n in stack.nodes_with("cassandra")]
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        for future in [pool.submit(step, name) for name in names]:
            future.result()


def read_journal(stack: Stack, target: str) -> Journal | None:
    """The journal of an unfinished restore into ``target``, from the first node that has it."""
    for node in stack.nodes_with("cassandra"):
        with host_for(stack, node.name) as host:
            out = host.run(host.privileged(["cat", "--", journal_path(stack, node.name, target)]), timeout=60,
                           check=False)
        if out.exit_code == 0:
            try:
                return Journal(**json.loads(out.stdout))
            except (ValueError, TypeError) as exc:
                raise CassandraError(f"{node.name}: rollback journal of {target} is unreadable: "
                                     f"{exc}; inspect it before going on") from exc
    return None


def describe_live(stack: Stack, target: str, backup_id: str) -> Journal:
    """The target keyspace as it is now (or that it does not exist)."""
    with cql_session(stack) as session:
        try:
            live = keyspace_schema(session, target)
        except CassandraError:  # the keyspace does not exist
            return Journal(target, backup_id, existed=False, replication={}, schema_cql="")
    return Journal(target, backup_id, existed=True, replication=live["replication"],
                   schema_cql=live["schema_cql"])


def snapshot_node(stack: Stack, node: str, target: str) -> int:
    """Snapshot the live keyspace on one node under the rollback tag; a half-made snapshot of an
    earlier attempt (the journal said not yet snapshotted) is replaced. Returns the table count."""
    settings = stack.cassandra.settings_for(node)
    tag = rollback_tag(target)
    with host_for(stack, node) as host:
        for snap in find_table_snapshots(host, settings, tag, target):
            host.run(host.privileged(["rm", "-rf", "--", snap.path]), timeout=600)
        nodetool(host, settings, "snapshot", "-t", tag, "--", cql_identifier(target), timeout=600)
        return len(find_table_snapshots(host, settings, tag, target))


def put_back_node(stack: Stack, node: str, target: str) -> dict:
    """Import every table of the rollback snapshot on one node into the recreated keyspace."""
    settings = stack.cassandra.settings_for(node)
    tag = rollback_tag(target)
    imported = 0
    with host_for(stack, node) as host:
        for snap in find_table_snapshots(host, settings, tag, target):
            copy = f"{snap.path}-import"
            host.run(host.privileged(["rm", "-rf", "--", copy]), timeout=600)
            host.run(host.privileged(["cp", "-al", "--", snap.path, copy]), timeout=600)  # hard links, same disk
            nodetool(host, settings, "import", target, snap.table, copy, timeout=3600)
            left = leftover_sstables(host, copy)
            if left:
                raise CassandraError(f"{node}: rollback import of {target}.{snap.table} left "
                                     f"{len(left)} SSTable(s) in {copy}")
            host.run(host.privileged(["rm", "-rf", "--", copy]), timeout=600)
            imported += 1
    return {"node": node, "tables": imported}


def recreate_previous(stack: Stack, journal: Journal) -> None:
    """Drop whatever the restore left in the keyspace and create it as the journal recorded it."""
    target = cql_identifier(journal.target)
    with schema_session(stack) as session:
        session.execute(f"DROP KEYSPACE IF EXISTS {target}")
        if journal.existed:
            replication = ", ".join(f"'{k}': '{v}'" for k, v in journal.replication.items())
            session.execute(f"CREATE KEYSPACE {target} WITH replication = {{{replication}}} "
                            "AND durable_writes = true")
            for stmt in rewrite_schema(journal.schema_cql, target, target):
                session.execute(stmt)


#: Every ``<keyspace folder>/<table>/snapshots/<tag>`` (find_table_snapshots' folders) and its
#: import copy removed, the emptied table folders too, then the journal: one command per node.
DISCARD = ('journal=$1; tag=$2; shift 2; for ks in "$@"; do for snap in "$ks"/*/snapshots/"$tag"; do '
           '[ -d "$snap" ] || continue; rm -rf -- "$snap" "$snap-import" || exit 1; '
           'rmdir -- "${snap%/*}" "${snap%/*/*}" 2>/dev/null; done; done; exec rm -f -- "$journal"')


def discard(stack: Stack, target: str) -> None:
    """Remove the rollback snapshot and the journal: called once a restore or rollback is done.
    Every node at once; the journal goes last, once its snapshot is gone."""
    tag = rollback_tag(target)

    def discard_node(node: str) -> None:
        settings = stack.cassandra.settings_for(node)
        ks_dirs = [posixpath.join(d, cql_identifier(target)) for d in settings.data_dirs]
        with host_for(stack, node) as host:
            host.run(host.privileged(["sh", "-c", DISCARD, "sh", journal_path(stack, node, target), tag,
                                      *ks_dirs]), timeout=1800)

    on_every_node(stack, discard_node)


# -- Prefect tasks -----------------------------------------------------------------------------

@side_effect_task(name="snapshot before restore", task_run_name="rollback snapshot {target} on {node}")
def snapshot_node_task(stack: Stack, node: str, target: str) -> int:
    return snapshot_node(stack, node, target)


@side_effect_task(name="put back previous keyspace", task_run_name="roll back {target} on {node}",
                  retry=False)
def put_back_node_task(stack: Stack, node: str, target: str) -> dict:
    return put_back_node(stack, node, target)
