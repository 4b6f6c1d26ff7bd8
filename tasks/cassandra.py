"""Cassandra operations: CQL session, nodetool on a node, snapshots, schema and topology.

Plain functions over a Host or a driver Session, with thin Prefect tasks at the end. Passwords go
to the driver only, never to a command line.
"""
from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.policies import RoundRobinPolicy, WhiteListRoundRobinPolicy

from config.model import CassandraNodeSettings, Stack, cql_identifier
from tasks import layout
from tasks.archive import Compression
from tasks.content_store import RunStore
from tasks.digests import table_digest
from tasks.hosts import CommandFailed, Host, host_for
from tasks.layout import is_our_tag
from tasks.manifest import ObjectEntry
from tasks.repositories import Repository, open_repository
from tasks.retry import side_effect_task
from tasks.table_archive import stream_table
from tasks.table_parts import table_entry
from tasks.transfer import store

SNAPSHOT_TAG = re.compile(r"^[a-z0-9][a-z0-9-]{0,80}\Z")


class CassandraError(Exception):
    pass


def _tag(tag: str) -> str:
    if not SNAPSHOT_TAG.match(tag):
        raise ValueError(f"invalid snapshot tag {tag!r}")
    return tag


@contextmanager
def cql_session(stack: Stack, contact_points: list[str] | None = None,
                timeout: float = 60, schema_agreement_wait: float = 10) -> Iterator[Session]:
    """A driver session on the stack's cluster; credentials resolved from their reference."""
    c = stack.cassandra
    auth = None
    if c.username is not None and c.password is not None:
        auth = PlainTextAuthProvider(c.username, c.password.resolve().get_secret_value())
    points = contact_points or stack.contact_points()
    profile = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy(points) if points else RoundRobinPolicy(),
        request_timeout=timeout,
    )
    # Protocol v5: TheHive 5 runs on Cassandra 4.x/5.x, which all speak it.
    cluster = Cluster(points, port=c.cql_port, auth_provider=auth, connect_timeout=15,
                      protocol_version=5, max_schema_agreement_wait=schema_agreement_wait,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    try:
        yield cluster.connect()
    finally:
        cluster.shutdown()


@contextmanager
def schema_session(stack: Stack, timeout: float = 120, agreement_wait: float = 120) -> Iterator[Session]:
    """A session for a series of schema changes, all sent to one coordinator.

    A coordinator applies a schema change before it answers, so the next statement on the same
    node sees it: waiting for the whole cluster to agree after every statement (the driver's
    default) is needed only once, at the end, before anyone else uses the schema. That single
    wait halves the time of a keyspace's DROP/CREATE and its tables on a 3-node cluster.
    """
    points = stack.contact_points()
    failures = []
    for point in points:  # the first node that answers coordinates everything
        connection = cql_session(stack, [point], timeout, schema_agreement_wait=0)
        try:
            session = connection.__enter__()
        except NoHostAvailable as exc:
            failures.append(f"{point}: {exc}")
            continue
        try:
            yield session
            if not session.cluster.control_connection.wait_for_schema_agreement(wait_time=agreement_wait):
                raise CassandraError(f"the cluster did not agree on the schema within {agreement_wait:.0f} s "
                                     f"of the changes made through {point}: see `nodetool describecluster`")
        finally:
            connection.__exit__(None, None, None)
        return
    raise CassandraError(f"no Cassandra node answers CQL: {'; '.join(failures)}")


def nodetool(host: Host, settings: CassandraNodeSettings, *args: str, timeout: float = 600) -> str:
    return host.run([*settings.nodetool, *args], timeout=timeout).text


def node_states(host: Host, settings: CassandraNodeSettings) -> dict[str, str]:
    """``nodetool status`` as {address: state}, e.g. {"127.0.0.1": "UN"}."""
    states = {}
    for line in nodetool(host, settings, "status", timeout=120).splitlines():
        m = re.match(r"^([UD][NLJM])\s+(\S+)\s", line)
        if m:
            states[m.group(2)] = m.group(1)
    if not states:
        raise CassandraError(f"{host.name}: `nodetool status` listed no node")
    return states


def take_snapshot(host: Host, settings: CassandraNodeSettings, tag: str, keyspaces: list[str]) -> None:
    nodetool(host, settings, "snapshot", "-t", _tag(tag), "--",
             *[cql_identifier(k) for k in keyspaces])


def clear_snapshot(host: Host, settings: CassandraNodeSettings, tag: str) -> None:
    nodetool(host, settings, "clearsnapshot", "-t", _tag(tag))


def list_snapshots(host: Host, settings: CassandraNodeSettings) -> set[str]:
    """Snapshot tags present on the node (``nodetool listsnapshots``)."""
    tags = set()
    for line in nodetool(host, settings, "listsnapshots").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] not in ("Snapshot", "Total", "There"):
            tags.add(parts[0])
    return tags


def snapshot_tags_on_disk(host: Host, settings: CassandraNodeSettings) -> set[str]:
    """Snapshot tags in the node's data folders (``<data_dir>/<keyspace>/<table>/snapshots/<tag>``):
    the tags ``nodetool listsnapshots`` reports, read by one ``find`` instead of a JVM start (a
    second of CPU on the node). A missing data folder fails: ``data_dirs`` is then wrong."""
    out = host.run(host.privileged(["find", *settings.data_dirs, "-mindepth", "4", "-maxdepth", "4",
                                    "-type", "d", "-path", "*/snapshots/*", "-printf", "%f\\n"]), timeout=120)
    return {line for line in out.text.splitlines() if line}


def clear_leftover_snapshots(host: Host, settings: CassandraNodeSettings, repo_id: str,
                             tags: set[str] | None = None) -> list[str]:
    """Clear the snapshots that backups into the repository ``repo_id`` left on the node
    (``tags``: the node's snapshot tags when the caller listed them already).

    Only for a caller holding that repository's lock: then no backup of ours is in flight, so
    every such tag is a leftover. Other repositories' tags, tags of earlier versions (no
    repository id) and the restore's ``rb-`` snapshots are never touched.
    """
    cleared = []
    for tag in sorted(snapshot_tags_on_disk(host, settings) if tags is None else tags):
        if is_our_tag(tag, repo_id):
            clear_snapshot(host, settings, tag)
            cleared.append(tag)
    return cleared


def clear_leftover_snapshots_everywhere(stack: Stack, repo_id: str) -> dict[str, list[str] | str]:
    """``clear_leftover_snapshots`` on every Cassandra node; per node the tags cleared, or the
    error (one node down must not keep the others' snapshots pinned). Same rule: lock held."""
    outcome: dict[str, list[str] | str] = {}
    for node in stack.nodes_with("cassandra"):
        try:
            with host_for(stack, node) as host:
                outcome[node.name] = clear_leftover_snapshots(
                    host, stack.cassandra.settings_for(node.name), repo_id)
        except Exception as exc:
            outcome[node.name] = f"{type(exc).__name__}: {exc}"
    return outcome


@dataclass(frozen=True)
class TableSnapshot:
    """One table's snapshot folder on one node."""

    keyspace: str
    table: str
    table_dir: str  # "<table>-<id>"
    path: str


def find_table_snapshots(host: Host, settings: CassandraNodeSettings, tag: str,
                         keyspace: str) -> list[TableSnapshot]:
    """Every ``<data_dir>/<keyspace>/<table>-<id>/snapshots/<tag>`` folder on the node."""
    found = []
    for data_dir in settings.data_dirs:
        ks_dir = posixpath.join(data_dir, cql_identifier(keyspace))
        out = host.run(host.privileged(["find", ks_dir, "-mindepth", "3", "-maxdepth", "3", "-type", "d",
                        "-path", f"*/snapshots/{_tag(tag)}"]), timeout=120, check=False)
        if out.exit_code != 0 and b"No such file" not in out.stderr:
            raise CassandraError(f"{host.name}: cannot list {ks_dir}: {out.stderr.decode()}")
        for path in out.text.split():
            table_dir = path.split("/")[-3]
            found.append(TableSnapshot(keyspace, table_dir.rpartition("-")[0], table_dir, path))
    return sorted(found, key=lambda t: t.table_dir)


def keyspace_schema(session: Session, keyspace: str) -> dict:
    """CQL of the keyspace and its tables, from the driver's metadata."""
    cluster = session.cluster
    cluster.refresh_schema_metadata()
    meta = cluster.metadata.keyspaces.get(cql_identifier(keyspace))
    if meta is None:
        raise CassandraError(f"keyspace {keyspace!r} does not exist")
    return {
        "schema_cql": meta.export_as_string(),
        "replication": _replication(session, keyspace),
        "tables": {name: str(t.options.get("id", "")) for name, t in meta.tables.items()},
    }


def _replication(session: Session, keyspace: str) -> dict:
    row = session.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", [keyspace]).one()
    return dict(row.replication) if row else {}


def topology(session: Session) -> dict:
    """Cluster name, version, partitioner and, per node, host id, dc, rack and tokens.

    From the driver's metadata (one consistent view), not from system.local + system.peers, which
    may be answered by two different coordinators.
    """
    cluster = session.cluster
    cluster.refresh_nodes()
    meta = cluster.metadata
    tokens: dict = {}
    for token, host in meta.token_map.token_to_host_owner.items():
        tokens.setdefault(host.host_id, []).append(str(token.value))
    nodes = [{
        "address": str(h.broadcast_address or h.address), "host_id": str(h.host_id),
        "dc": h.datacenter, "rack": h.rack, "tokens": sorted(tokens.get(h.host_id, []), key=int),
    } for h in meta.all_hosts()]
    local = session.execute("SELECT release_version, partitioner FROM system.local").one()
    return {
        "cluster_name": meta.cluster_name, "version": local.release_version,
        "partitioner": local.partitioner, "nodes": sorted(nodes, key=lambda n: n["address"]),
    }


def drop_keyspace(stack: Stack, keyspace: str) -> None:
    """Drop a scratch keyspace of ours (the drill's) and the ``dropped-*`` snapshots Cassandra's
    auto_snapshot takes of it on every node: otherwise each weekly drill leaves a full copy of
    the keyspace on disk."""
    name = cql_identifier(keyspace)
    with cql_session(stack) as session:
        session.execute(f"DROP KEYSPACE IF EXISTS {name}")
    for node in stack.nodes_with("cassandra"):
        with host_for(stack, node.name) as host:
            nodetool(host, stack.cassandra.settings_for(node.name), "clearsnapshot", "--all", "--", name)


# -- backup steps ------------------------------------------------------------------------------

def archive_table(stack: Stack, repo: Repository, node: str, snap: TableSnapshot, backup_id: str,
                  compression: Compression, incremental: bool = False) -> ObjectEntry:
    """Stream one table's snapshot folder from the node into the repository as one archive or,
    ``incremental``, component by component under their content names (tasks/table_parts.py)."""
    if incremental:
        with host_for(stack, node) as host:
            return table_entry(host, repo, RunStore.of(backup_id, repo), backup_id=backup_id, node=node,
                               keyspace=snap.keyspace, table=snap.table, table_dir=snap.table_dir,
                               root=snap.path, compression=compression,
                               streams=stack.cassandra.streams_per_table,
                               open_repo=lambda: open_repository(stack))
    key = layout.table_key(backup_id, node, snap.keyspace, snap.table_dir, compression)
    with host_for(stack, node) as host:
        streamed = stream_table(host, repo, key, snap.path, compression)
    stored, stats = streamed.stored, streamed.stats
    return ObjectEntry(
        key=key, size=stored.size, sha256=stored.sha256, component="cassandra", node=node,
        keyspace=snap.keyspace, table=snap.table, table_dir=snap.table_dir,
        compression=compression, raw_size=stats.raw_size, files=stats.files,
        seconds=round(stored.seconds, 3), sstables=streamed.sstables,
        fingerprint=streamed.fingerprint,
    )


def _find_dirs(host: Host, settings: CassandraNodeSettings, keyspace: str, depth: int,
               pattern: str) -> set[str]:
    """Table folders (``<data_dir>/<keyspace>/<table>-<id>``) holding a file at ``depth`` below
    the keyspace folder whose path matches ``pattern``."""
    found = set()
    for data_dir in settings.data_dirs:
        ks_dir = posixpath.join(data_dir, cql_identifier(keyspace))
        out = host.run(host.privileged(["find", ks_dir, "-mindepth", str(depth), "-maxdepth", str(depth), "-type", "f",
                        "-path", pattern]), timeout=120, check=False)
        if out.exit_code != 0 and b"No such file" not in out.stderr:
            raise CassandraError(f"{host.name}: cannot list {ks_dir}: {out.stderr.decode()}")
        found |= {posixpath.join(ks_dir, p[len(ks_dir) + 1:].split("/")[0]) for p in out.text.split()}
    return found


def unfinished_tables(host: Host, settings: CassandraNodeSettings, tag: str, keyspace: str) -> set[str]:
    """Table folders with live data but no finished snapshot ``tag`` (Cassandra writes a table's
    snapshot ``manifest.json`` after its links): non-empty while a snapshot is still being made."""
    live = _find_dirs(host, settings, keyspace, 2, "*-Data.db")
    done = _find_dirs(host, settings, keyspace, 4, f"*/snapshots/{_tag(tag)}/manifest.json")
    return live - done


def take_snapshot_once(host: Host, settings: CassandraNodeSettings, tag: str, keyspaces: list[str],
                       *, wait: float = 120, poll: float = 2) -> list[str]:
    """``nodetool snapshot`` made safe to retry: keyspaces already holding ``tag`` on the node
    count as done, only the others are snapshotted; return the keyspaces snapshotted now.

    The tag is unique to one backup run, so a folder with it is that run's earlier attempt whose
    answer was lost (Cassandra refuses the whole call with "already exists" then). That attempt
    may still be running on the node (a lost SSH connection does not stop it): its snapshot is
    accepted once every table with data has a finished snapshot folder, waiting up to ``wait``
    seconds; a snapshot left half-made fails the step with what to do.
    """
    def holding() -> list[str]:
        return [ks for ks in keyspaces if find_table_snapshots(host, settings, tag, ks)]

    earlier = holding()
    todo = [ks for ks in keyspaces if ks not in earlier]
    if todo:
        try:
            take_snapshot(host, settings, tag, todo)
        except CommandFailed as exc:
            if "already exists" not in str(exc):
                raise
            earlier = holding()
            if set(todo) - set(earlier):
                raise
            todo = []
    deadline = time.monotonic() + wait
    for ks in earlier:
        while unfinished := unfinished_tables(host, settings, tag, ks):
            if time.monotonic() > deadline:
                raise CassandraError(
                    f"{host.name}: snapshot {tag} of {ks} lacks {len(unfinished)} table(s) "
                    f"({', '.join(sorted(posixpath.basename(d) for d in unfinished)[:5])}) after "
                    f"{wait:.0f}s; clear it (nodetool clearsnapshot -t {tag}) and run the backup again")
            time.sleep(poll)
    return todo


def snapshot_node(stack: Stack, node: str, tag: str, keyspaces: list[str]) -> list[TableSnapshot]:
    """Snapshot the keyspaces on one node (idempotent per tag) and return the table folders."""
    settings = stack.cassandra.settings_for(node)
    with host_for(stack, node) as host:
        take_snapshot_once(host, settings, tag, keyspaces)
        tables = [t for ks in keyspaces for t in find_table_snapshots(host, settings, tag, ks)]
    if not tables:
        raise CassandraError(f"{node}: snapshot {tag} produced no table folder under "
                             f"{', '.join(settings.data_dirs)}; check data_dirs in the stack file")
    return tables


def clear_node(stack: Stack, node: str, tag: str) -> None:
    with host_for(stack, node) as host:
        clear_snapshot(host, stack.cassandra.settings_for(node), tag)


def capture_metadata(stack: Stack, repo: Repository, backup_id: str, keyspaces: list[str],
                     digests: bool = False) -> tuple[dict, list[ObjectEntry]]:
    """Schema (CQL per keyspace, also stored as objects), topology and, only when asked, a row
    count and content digest per table: a full read of the keyspace at consistency ALL (exact
    when nothing writes during the backup), kept off a default backup (tasks/digests.py)."""
    with cql_session(stack, timeout=600) as session:
        topo = topology(session)
        schemas = {ks: keyspace_schema(session, ks) for ks in keyspaces}
        if digests:
            for ks, schema in schemas.items():
                schema["digests"] = {t: table_digest(session, ks, t) for t in schema["tables"]}
    addresses = {n.address: n.name for n in stack.nodes_with("cassandra")}
    for entry in topo["nodes"]:
        entry["name"] = addresses.get(entry["address"])
    entries = []
    for ks, schema in schemas.items():
        stored = store(repo, layout.schema_key(backup_id, ks), [schema["schema_cql"].encode()])
        entries.append(ObjectEntry(key=stored.key, size=stored.size, sha256=stored.sha256,
                                   component="cassandra", keyspace=ks))
    return {**topo, "keyspaces": schemas}, entries


# -- Prefect tasks -----------------------------------------------------------------------------

@side_effect_task(name="archive table", task_run_name="archive {node}/{snap.keyspace}.{snap.table}")
def archive_table_task(stack: Stack, node: str, snap: TableSnapshot, backup_id: str,
                       compression: Compression, incremental: bool = False) -> ObjectEntry:
    with open_repository(stack) as repo:
        return archive_table(stack, repo, node, snap, backup_id, compression, incremental)


@side_effect_task(name="nodetool clearsnapshot", task_run_name="clearsnapshot {node}")
def clear_node_task(stack: Stack, node: str, tag: str) -> None:
    clear_node(stack, node, tag)


@side_effect_task(name="capture schema and topology")
def capture_metadata_task(stack: Stack, backup_id: str, keyspaces: list[str], digests: bool = False):
    with open_repository(stack) as repo:
        return capture_metadata(stack, repo, backup_id, keyspaces, digests)
