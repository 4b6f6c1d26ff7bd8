"""Put a keyspace back: recreate it from the backup's schema, then load each table's SSTables.

Two ways to load, chosen by comparing topologies:
- ``import``: the cluster is the one that was backed up (same host ids and tokens); each node gets
  its own archives back and ``nodetool import`` adopts them.
- ``sstableloader``: any other topology (3 nodes into 1, or the reverse); every archive is streamed
  through Cassandra's BulkLoader, which sends each row to the replicas that own it now.
Archives are staged on the nodes first (tasks/staging.py), before anything live is dropped; the
load then works from staging.
"""
from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from cassandra import ConsistencyLevel, InvalidRequest, Unauthorized
from cassandra.cluster import Session
from cassandra.query import SimpleStatement

from config.model import Stack, cql_identifier
from tasks.cassandra import CassandraError, cql_session, nodetool, schema_session
from tasks.hosts import Host, host_for
from tasks.manifest import CassandraRecord, NodeRecord, ObjectEntry
from tasks.retry import side_effect_task
from tasks.staging import StagedArchive


def choose_method(recorded: CassandraRecord, current: CassandraRecord) -> str:
    """``import`` when every backed-up node is in the cluster with the same tokens, else
    ``sstableloader``."""
    def shape(topo: CassandraRecord) -> set[tuple[str, tuple]]:
        return {(n.host_id, tuple(str(t) for t in n.tokens)) for n in topo.nodes}

    return "import" if shape(recorded) == shape(current) else "sstableloader"


def rewrite_schema(schema_cql: str, source: str, target: str) -> list[str]:
    """CREATE TABLE/TYPE/INDEX statements of the backup, moved to the target keyspace."""
    cql_identifier(source), cql_identifier(target)
    statements = []
    for stmt in schema_cql.split(";\n"):
        stmt = stmt.strip().rstrip(";")
        if not re.match(r"CREATE (TABLE|TYPE|INDEX|CUSTOM INDEX|MATERIALIZED VIEW)", stmt, re.I):
            continue  # the keyspace itself is created from the stack's replication
        stmt = re.sub(rf"(?<![\w\"]){re.escape(source)}\.", f"{target}.", stmt)
        # Cassandra's snapshot schema.cql pins the old table id; a new table gets a new one.
        stmt = re.sub(r"\bWITH ID = [0-9a-f-]+\s+AND\b", "WITH", stmt, flags=re.I)
        stmt = re.sub(r"\s+(WITH|AND) ID = [0-9a-f-]+", "", stmt, flags=re.I)
        statements.append(stmt)
    return statements


def recreate_keyspace(stack: Stack, schema_cql: str, source: str, target: str) -> dict:
    """Drop the target keyspace if present, create it with the stack's replication, create tables.

    With ``auto_snapshot: true`` (Cassandra's default) the drop leaves a ``dropped-…`` snapshot of
    every table on every node: it is reported, so the operator can reclaim the space.
    """
    target = cql_identifier(target)
    replication = ", ".join(f"'{k}': '{v}'" for k, v in stack.cassandra.replication.items())
    with schema_session(stack) as session:
        session.cluster.refresh_schema_metadata()
        existed = target in session.cluster.metadata.keyspaces
        if existed:
            session.execute(f"DROP KEYSPACE {target}")
        session.execute(f"CREATE KEYSPACE {target} WITH replication = {{{replication}}} "
                        "AND durable_writes = true")
        statements = rewrite_schema(schema_cql, source, target)
        for stmt in statements:
            session.execute(stmt)
    return {"dropped": existed, "tables": len(statements),
            "auto_snapshot_note": ("the drop left 'dropped-*' snapshots of the old tables on every "
                                   "node (auto_snapshot); `nodetool clearsnapshot --all` reclaims them")
            if existed else ""}


@dataclass(frozen=True)
class LoadJob:
    """One table archive to load through one node."""

    archive: ObjectEntry
    node: str  # the node that receives the archive and runs the loader


def plan_import(objects: list[ObjectEntry], recorded_nodes: list[NodeRecord], stack: Stack) -> list[LoadJob]:
    """Each backed-up node's archives go back to the node of the same address (same host id)."""
    by_address = {n.address: n.name for n in stack.nodes_with("cassandra")}
    name_of = {n.name: by_address.get(n.address) for n in recorded_nodes}
    jobs = []
    for o in objects:
        target = name_of.get(o.node) or (o.node if o.node in by_address.values() else None)
        if target is None:
            raise CassandraError(f"no node of the stack matches backed-up node {o.node!r}")
        jobs.append(LoadJob(o, target))
    return jobs


def plan_loader(objects: list[ObjectEntry], stack: Stack) -> list[LoadJob]:
    """Spread the archives over the cluster's nodes; BulkLoader routes the rows anyway."""
    nodes = [n.name for n in stack.nodes_with("cassandra")]
    return [LoadJob(o, nodes[i % len(nodes)]) for i, o in enumerate(objects)]


def leftover_sstables(host: Host, folder: str) -> list[str]:
    """SSTables in ``folder``: none means nothing to load; any left after ``nodetool import``
    were not adopted (it moves what it takes)."""
    out = host.run(host.privileged(["find", folder, "-name", "*-Data.db"]), timeout=300, check=False)
    return out.text.split()


def load_staged(stack: Stack, staged: StagedArchive, method: str,
                loader_credentials: tuple[str, str] | None, sstables: int | None = None) -> dict:
    """Load one staged archive: ``nodetool import`` adopts the files (a move, on the same disk),
    or BulkLoader streams its rows to the replicas that own them now. ``sstables``: how many
    staging counted in this run (None: count them on the node)."""
    settings = stack.cassandra.settings_for(staged.node)
    table = staged.archive.table
    if table is None:
        raise ValueError(f"{staged.archive.key} is not a table archive")
    with host_for(stack, staged.node) as host:
        if sstables == 0 or (sstables is None and not leftover_sstables(host, staged.folder)):
            # an empty table: no loader JVM for nothing
            return {"node": staged.node, "from": staged.archive.node, "table": table, "method": "none",
                    "empty": True}
        if method == "import":
            nodetool(host, settings, "import", staged.target, table, staged.folder, timeout=3600)
            left = leftover_sstables(host, staged.folder)
            if left:
                raise CassandraError(f"{staged.node}: nodetool import of {staged.target}.{table} left "
                                     f"{len(left)} SSTable(s) unimported in {staged.folder}")
        else:
            contact = ",".join(stack.contact_points())
            argv = [*settings.sstableloader, "--nodes", contact,
                    "--port", str(stack.cassandra.cql_port), "--no-progress"]
            if loader_credentials:
                # A one-off role that can only write the target keyspace, dropped right after:
                # BulkLoader has no way to read a password from a file or the environment.
                argv += ["--username", loader_credentials[0], "--password", loader_credentials[1]]
            host.run([*argv, staged.folder], timeout=3600)
    return {"node": staged.node, "from": staged.archive.node, "table": table, "method": method,
            "empty": False}


def create_loader_role(stack: Stack, target: str) -> tuple[str, str] | None:
    """A throw-away role for sstableloader (MODIFY on the target keyspace only)."""
    if stack.cassandra.username is None:
        return None
    name = f"thehive_backup_loader_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24)
    with cql_session(stack) as session:
        session.execute(f"CREATE ROLE {name} WITH LOGIN = true AND PASSWORD = %s", [password])
        _repair_auth_row(session, "roles", name)
        for permission in ("MODIFY", "SELECT"):
            _until_role_seen(session, f"GRANT {permission} ON KEYSPACE {cql_identifier(target)} TO {name}")
        _repair_auth_row(session, "role_permissions", name)
    return name, password


def _repair_auth_row(session: Session, table: str, role: str) -> None:
    """Read a new auth row at ALL: Cassandra writes and reads roles at LOCAL_ONE, so with
    system_auth replicated, another node may not see the role yet ("Role ... doesn't exist",
    a failed login); a read at ALL repairs every replica before it answers. Best effort: a
    user without SELECT on system_auth still has _until_role_seen."""
    statement = SimpleStatement(f"SELECT role FROM system_auth.{table} WHERE role = %s",
                                consistency_level=ConsistencyLevel.ALL)
    try:
        session.execute(statement, [role])
    except Unauthorized:
        pass


def _until_role_seen(session: Session, statement: str, wait: float = 30.0) -> None:
    """Run a statement on a role just created, again while the coordinator has not seen it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            session.execute(statement)
            return
        except InvalidRequest as e:
            if "doesn't exist" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def drop_loader_role(stack: Stack, credentials: tuple[str, str] | None) -> None:
    if credentials:
        with cql_session(stack) as session:
            session.execute(f"DROP ROLE IF EXISTS {cql_identifier(credentials[0])}")


@side_effect_task(name="load table", retry=False,
                  task_run_name="load {staged.archive.node}/{staged.archive.table} via {staged.node}")
def load_staged_task(stack: Stack, staged: StagedArchive, method: str,
                     loader_credentials: tuple[str, str] | None, sstables: int | None = None) -> dict:
    """Not retried: a half-done import is undone by the rollback, not repeated."""
    return load_staged(stack, staged, method, loader_credentials, sstables)


@side_effect_task(name="recreate keyspace", task_run_name="drop and create {target}", retry=False)
def recreate_keyspace_task(stack: Stack, schema_cql: str, source: str, target: str) -> dict:
    return recreate_keyspace(stack, schema_cql, source, target)


@side_effect_task(name="create loader role", retry=False)
def create_loader_role_task(stack: Stack, target: str) -> tuple[str, str] | None:
    return create_loader_role(stack, target)


@side_effect_task(name="drop loader role")
def drop_loader_role_task(stack: Stack, credentials: tuple[str, str] | None) -> None:
    drop_loader_role(stack, credentials)
