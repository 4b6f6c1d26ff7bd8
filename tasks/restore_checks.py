"""Checks a restore makes before its first change, beyond the backup itself (tasks/validate.py):
the replication it will create fits the live cluster, the CQL it will run works, and every node has
room for what will be staged and loaded there.

Each check returns a list of problems (empty: fine), each naming the node or setting, the need, and
the fix, so that a refusal lists everything at once.
"""
from __future__ import annotations

import posixpath
import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from config.model import Stack, check_replication, cql_identifier
from tasks.cassandra import cql_session, node_states, schema_session, topology
from tasks.cassandra_restore import rewrite_schema
from tasks.hosts import Host, host_for

#: Staged and loaded bytes are estimated from the archives' raw (tar) size; this covers the
#: difference between tar and file sizes, and Cassandra's own needs while importing.
SPACE_MARGIN = 1.2
SPACE_FLOOR = 64 << 20
#: A compressed archive of unknown raw size (the guide's .tbz) counts as this many times its size.
UNKNOWN_RATIO = 6


def current_topology(stack: Stack) -> dict:
    with cql_session(stack) as session:
        return topology(session)


def cluster_problems(stack: Stack) -> list[str]:
    """Every Cassandra node sees every other one UN (a restore into a degraded cluster loses rows).

    Asked of all nodes at once: each ``nodetool status`` starts a JVM on its node."""
    expected = {n.address for n in stack.nodes_with("cassandra")}

    def problem(name: str) -> str | None:
        try:
            with host_for(stack, name) as host:
                states = node_states(host, stack.cassandra.settings_for(name))
        except Exception as exc:
            return f"{name}: {exc}"
        bad = sorted(a for a in expected if states.get(a) != "UN")
        return f"{name}: nodetool status shows not UN: {', '.join(bad)}" if bad else None

    names = [n.name for n in stack.nodes_with("cassandra")]
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        return [p for p in pool.map(problem, names) if p]


def cluster_view(stack: Stack) -> tuple[list[str], dict | None]:
    """``cluster_problems`` and the live topology, asked at once (nodetool JVMs on the nodes,
    a CQL connection here). The topology is None when the cluster has problems; when it has
    none, a failure to read the topology is raised as before."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        topo = pool.submit(current_topology, stack)
        problems = cluster_problems(stack)
        if problems:
            topo.exception()  # waited for, and ignored: the refusal already names the cluster
            return problems, None
        return [], topo.result()


def replication_problems(replication: dict, nodes: list[dict]) -> list[str]:
    """The stack's replication against the live topology ([{"dc": ...}, ...] per node)."""
    try:
        cls = check_replication(replication)
    except ValueError as exc:
        return [f"cassandra.replication: {exc}"]
    per_dc = Counter(n["dc"] for n in nodes)
    factors = {k: int(str(v).split("/")[0]) for k, v in replication.items() if k != "class"}
    problems = []
    if cls == "SimpleStrategy":
        if factors["replication_factor"] > len(nodes):
            problems.append(f"cassandra.replication: replication_factor {factors['replication_factor']} "
                            f"but the cluster has {len(nodes)} node(s)")
        return problems
    for dc, rf in factors.items():
        if dc == "replication_factor":
            for name, count in sorted(per_dc.items()):
                if rf > count:
                    problems.append(f"cassandra.replication: replication_factor {rf} but datacenter "
                                    f"{name!r} has {count} node(s)")
        elif dc not in per_dc:
            problems.append(f"cassandra.replication: datacenter {dc!r} is not in the cluster "
                            f"(it has {', '.join(sorted(per_dc)) or 'none'})")
        elif rf > per_dc[dc]:
            problems.append(f"cassandra.replication: {dc}: {rf} replicas but the datacenter has "
                            f"{per_dc[dc]} node(s)")
    return problems


def scratch_schema_problems(stack: Stack, schema_cql: str, source: str) -> list[str]:
    """Run the CQL the restore will run, under a scratch keyspace name, then drop it: a schema
    Cassandra refuses is found before the live keyspace is dropped, not after."""
    scratch = f"thb_check_{secrets.token_hex(4)}"
    replication = ", ".join(f"'{k}': '{v}'" for k, v in stack.cassandra.replication.items())
    problems: list[str] = []
    try:
        with schema_session(stack) as session:
            try:
                session.execute(f"CREATE KEYSPACE {scratch} WITH replication = {{{replication}}}")
                for stmt in rewrite_schema(schema_cql, cql_identifier(source), scratch):
                    try:
                        session.execute(stmt)
                    except Exception as exc:
                        problems.append(f"schema of {source!r}: Cassandra refuses "
                                        f"`{stmt[:120]}…`: {exc}")
                        break
            except Exception as exc:
                problems.append(f"cassandra.replication: CREATE KEYSPACE with "
                                f"{{{replication}}} is refused: {exc}")
            finally:
                session.execute(f"DROP KEYSPACE IF EXISTS {scratch}")
    except Exception as exc:
        return [f"CQL connection to {', '.join(stack.contact_points())}: {exc}"]
    _clear_scratch_snapshots(stack, scratch)
    return problems


def _clear_scratch_snapshots(stack: Stack, scratch: str) -> None:
    """The drop's auto_snapshot left ``dropped-*`` folders of the empty scratch tables: remove the
    scratch keyspace's folder (a file removal, cheaper than a nodetool JVM per node)."""
    for node in stack.nodes_with("cassandra"):
        settings = stack.cassandra.settings_for(node.name)
        try:
            with host_for(stack, node.name) as host:
                host.run(host.privileged(["rm", "-rf", "--",
                                          *[posixpath.join(d, scratch) for d in settings.data_dirs]]),
                         timeout=300)
        except Exception:
            continue  # an empty folder left behind is harmless; the check itself passed


@dataclass(frozen=True)
class SpaceNeed:
    """Bytes one node needs: in staging, and in its data folders for the load."""

    node: str
    staging: int
    data: int


@dataclass(frozen=True)
class Filesystem:
    mount: str
    free: int


def free_space(host: Host, path: str) -> Filesystem:
    """The filesystem holding ``path`` (or its nearest existing parent) and its free bytes."""
    probe = path
    while probe not in ("", "/") and host.run(host.privileged(["test", "-e", probe]), timeout=60,
                                               check=False).exit_code:
        probe = posixpath.dirname(probe.rstrip("/"))
    out = host.run(host.privileged(["df", "-P", "-B1", "--", probe or "/"]),
                   timeout=60).text.splitlines()[-1].split()
    return Filesystem(mount=out[5], free=int(out[3]))


def needed(raw_bytes: int) -> int:
    return int(raw_bytes * SPACE_MARGIN) + SPACE_FLOOR


def space_problems(stack: Stack, needs: list[SpaceNeed]) -> list[str]:
    """Every node has room to stage and to load; staging and data on one disk add up. All nodes
    are measured at once."""
    with ThreadPoolExecutor(max_workers=max(1, len(needs))) as pool:
        return [p for found in pool.map(lambda need: node_space_problems(stack, need), needs)
                for p in found]


def node_space_problems(stack: Stack, need: SpaceNeed) -> list[str]:
    settings = stack.cassandra.settings_for(need.node)
    try:
        with host_for(stack, need.node) as host:
            staging = free_space(host, settings.staging_dir)
            data = free_space(host, settings.data_dirs[0])
    except Exception as exc:
        return [f"{need.node}: cannot measure free space: {exc}"]
    problems = []
    if staging.mount == data.mount:
        # import moves staged files into the data folder: staged once, counted once
        total = max(need.staging, need.data)
        if staging.free < needed(total):
            problems.append(
                f"{need.node}: {settings.staging_dir} (on {staging.mount}, also the data disk) has "
                f"{staging.free >> 20} MiB free; staging and loading need about "
                f"{needed(total) >> 20} MiB. Free space there, or set cassandra.nodes."
                f"{need.node}.staging_dir to a folder on another disk")
        return problems
    if staging.free < needed(need.staging):
        problems.append(
            f"{need.node}: staging_dir {settings.staging_dir} (on {staging.mount}) has "
            f"{staging.free >> 20} MiB free; staging needs about {needed(need.staging) >> 20} MiB. "
            f"Set cassandra.nodes.{need.node}.staging_dir to a folder on a larger disk")
    if data.free < needed(need.data):
        problems.append(
            f"{need.node}: data folder {settings.data_dirs[0]} (on {data.mount}) has "
            f"{data.free >> 20} MiB free; loading needs about {needed(need.data) >> 20} MiB "
            "(the previous content is kept until the restore is checked)")
    return problems


@task(name="check restore prerequisites", cache_policy=NO_CACHE)
def check_prerequisites_task(stack: Stack, schema_cql: dict[str, str], needs: list[SpaceNeed],
                             topology_nodes: list[dict]) -> list[str]:
    """Replication, CQL (under a scratch name) and space, all problems listed. Space is measured
    while the scratch CQL runs (both only read or touch a scratch name); the CQL is tried only
    with a replication that fits the cluster."""
    problems = replication_problems(dict(stack.cassandra.replication), topology_nodes)
    scratch: list[str] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        space = pool.submit(space_problems, stack, needs)
        if not problems:
            for source, cql in schema_cql.items():
                scratch += scratch_schema_problems(stack, cql, source)
        return problems + space.result() + scratch
