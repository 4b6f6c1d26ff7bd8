"""System keyspaces in a hot backup: found on each node, snapshotted with the others, recorded apart.

A node rebuild (flows/node_rebuild.py) needs every keyspace of the node, its identity (host id,
tokens) and the schema included; a restore never touches them. The known names are the guide's;
any other ``system_*`` keyspace folder on the node (Cassandra 5.x adds some) is found on disk, not
hard-coded. Virtual keyspaces (``system_views``, ``system_virtual_schema``) have no folder and
nothing to archive.
"""
from __future__ import annotations

import posixpath

from config.model import CQL_IDENTIFIER, CassandraNodeSettings, Stack
from tasks import cassandra
from tasks.cassandra import TableSnapshot
from tasks.hosts import Host, host_for
from tasks.manifest import ObjectEntry
from tasks.retry import side_effect_task

KNOWN = ("system", "system_schema", "system_auth", "system_distributed", "system_traces")


def is_system_keyspace(name: str) -> bool:
    return name in KNOWN or name.startswith("system_")


def on_disk(host: Host, settings: CassandraNodeSettings) -> list[str]:
    """The system keyspaces with a folder in one of the node's data folders."""
    found: set[str] = set()
    for data_dir in settings.data_dirs:
        out = host.run(host.privileged(["find", data_dir, "-mindepth", "1", "-maxdepth", "1", "-type", "d",
                        "-name", "system*"]), timeout=120, check=False)
        names = {posixpath.basename(p) for p in out.text.split()}
        found |= {n for n in names if is_system_keyspace(n) and CQL_IDENTIFIER.match(n)}
    return sorted(found)


def snapshot_node(stack: Stack, node: str, tag: str, keyspaces: list[str],
                  include_system: bool) -> list[TableSnapshot]:
    """``cassandra.snapshot_node``, with the node's system keyspaces added when asked."""
    extra: list[str] = []
    if include_system:
        with host_for(stack, node) as host:
            extra = [k for k in on_disk(host, stack.cassandra.settings_for(node)) if k not in keyspaces]
    return cassandra.snapshot_node(stack, node, tag, [*keyspaces, *extra])


def archived(entries: list[ObjectEntry], keyspaces: list[str]) -> dict[str, list[str]]:
    """Node name -> system keyspaces with a table archive among ``entries`` (the manifest's
    record); ``keyspaces``, the backup's own, never count as system ones."""
    found: dict[str, set[str]] = {}
    for e in entries:
        if (e.node and e.keyspace and e.table_dir and e.keyspace not in keyspaces
                and is_system_keyspace(e.keyspace)):
            found.setdefault(e.node, set()).add(e.keyspace)
    return {n: sorted(ks) for n, ks in sorted(found.items())}


@side_effect_task(name="nodetool snapshot", task_run_name="snapshot {node}")
def snapshot_node_task(stack: Stack, node: str, tag: str, keyspaces: list[str],
                       include_system: bool = False) -> list[TableSnapshot]:
    return snapshot_node(stack, node, tag, keyspaces, include_system)
