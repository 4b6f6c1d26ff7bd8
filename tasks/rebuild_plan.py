"""What a node rebuild works from: which backup, which of its objects, which folders, and whether a
repair is advisable afterwards. Plain code over manifests and settings; nothing here touches a node.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

from config.model import CassandraNodeSettings
from tasks import layout
from tasks.catalog import catalog
from tasks.manifest import Manifest, ManifestError, ObjectEntry, read_manifest
from tasks.repositories import Repository


class RebuildRefused(RuntimeError):
    """The backup cannot rebuild the node; nothing was changed."""


def system_keyspaces_of(manifest: Manifest, node: str) -> list[str]:
    return list((manifest.cassandra.system_keyspaces or {}).get(node, [])) if manifest.cassandra else []


def holds_node_system(manifest: Manifest, node: str) -> bool:
    """The backup archived ``node``'s ``system`` keyspace (its identity: host id, tokens)."""
    return "system" in system_keyspaces_of(manifest, node)


def newest_with_system(repo: Repository, node: str, before: str | None = None) -> str | None:
    """The newest complete backup holding ``node``'s system keyspaces (older than ``before``,
    a backup id, when given), or None."""
    for row in catalog(repo):
        if row["status"] != "complete" or row["kind"] != "hot":
            continue
        if before and layout.backup_sort_key(row["id"]) >= layout.backup_sort_key(before):
            continue
        try:
            if holds_node_system(read_manifest(repo, row["id"]), node):
                return row["id"]
        except ManifestError:
            continue
    return None


def choose_backup(repo: Repository, node: str, backup_id: str) -> Manifest:
    """'latest' (or ''): the newest complete backup with the node's system keyspaces. A named
    backup without them is refused, naming one that has them."""
    if backup_id in ("", "latest"):
        found = newest_with_system(repo, node)
        if found is None:
            raise RebuildRefused(f"{repo.url} holds no complete backup with {node}'s system keyspaces; "
                                 "take one: hot_backup(include_system_keyspaces=True)")
        return read_manifest(repo, found)
    manifest = read_manifest(repo, backup_id)
    if not holds_node_system(manifest, node):
        other = newest_with_system(repo, node)
        hint = (f"the newest backup that has them is {other}" if other else
                "no backup in the repository has them; take one: hot_backup(include_system_keyspaces=True)")
        raise RebuildRefused(f"backup {backup_id} holds no system keyspaces of {node}: {hint}")
    return manifest


def node_objects(manifest: Manifest, node: str) -> list[ObjectEntry]:
    """Every table archive of ``node``: its system keyspaces and the backup's own keyspaces."""
    return [o for o in manifest.objects
            if o.component == "cassandra" and o.node == node and o.keyspace and o.table_dir]


def problems(manifest: Manifest, node: str, address: str) -> list[str]:
    """Why this backup cannot rebuild this node (beyond the objects' own integrity)."""
    found = []
    recorded = {n.name: n for n in (manifest.cassandra.nodes if manifest.cassandra else [])}
    rec = recorded.get(node)
    if rec is None:
        found.append(f"the backup records no node {node!r} in its topology")
    elif rec.address != address:
        found.append(f"the backup's {node} had address {rec.address}; the stack says {address} "
                     "(a rebuild keeps the node's identity: use the same address)")
    objects = node_objects(manifest, node)
    if not any(o.keyspace == "system" and o.table == "local" for o in objects):
        found.append(f"the backup has no archive of {node}'s system.local")
    return found


def table_folder(settings: CassandraNodeSettings, entry: ObjectEntry) -> str:
    """Where a table archive goes: ``<first data folder>/<keyspace>/<table>-<table id>``, the
    folder name (and so the table id) exactly as backed up."""
    assert entry.keyspace and entry.table_dir
    for part in (entry.keyspace, entry.table_dir):
        if "/" in part or part in ("", ".", ".."):
            raise RebuildRefused(f"{entry.key}: {part!r} is not a folder name")
    return posixpath.join(settings.data_dirs[0], entry.keyspace, entry.table_dir)


@dataclass(frozen=True)
class NodeFolder:
    """A folder of the node that a rebuild moves aside and refills (or leaves empty)."""

    role: str  # data, commitlog, hints, saved_caches
    path: str


def node_folders(settings: CassandraNodeSettings) -> list[NodeFolder]:
    folders = [NodeFolder("data" if i == 0 else f"data{i}", p) for i, p in enumerate(settings.data_dirs)]
    folders += [NodeFolder("commitlog", settings.commitlog_dir), NodeFolder("hints", settings.hints_dir),
                NodeFolder("saved_caches", settings.saved_caches_dir)]
    return folders


def replication_factor(replication: dict[str, str]) -> int:
    """Replicas a keyspace keeps (LocalStrategy: 1; "3/1" counts its full replicas)."""
    cls = replication.get("class", "")
    if cls.endswith("LocalStrategy"):
        return 1
    if cls.endswith("EverywhereStrategy"):
        return 2
    return sum(int(str(v).split("/")[0]) for k, v in replication.items()
               if k != "class" and str(v).split("/")[0].isdigit())


def repair_advice(node: str, replication: dict[str, dict[str, str]], backup_finished: str) -> tuple[bool, str]:
    """Whether ``nodetool repair`` on the rebuilt node is advisable, and why.

    The node holds its data as of the backup; anything written since went to its replicas only.
    With more than one replica, a repair brings it back; with one, those writes are lost for its
    ranges and no repair can help.
    """
    replicated = sorted(ks for ks, r in replication.items() if replication_factor(r) > 1)
    if replicated:
        return True, (f"{node} holds the data of {backup_finished}; writes since then are only on its "
                      f"replicas: run `nodetool repair --full` on {node} (keyspaces with RF>1: "
                      f"{', '.join(replicated)}), or rebuild with repair=True")
    return False, (f"no keyspace keeps more than one replica: nothing to repair from; writes to {node} "
                   f"after {backup_finished} are lost")
