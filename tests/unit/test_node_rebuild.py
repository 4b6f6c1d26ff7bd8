"""Node rebuild's pure logic: which backup, which objects and folders, system keyspaces recorded
apart, repair advice, journal keys, the stack file's new settings."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.model import Cassandra, CassandraNodeSettings
from tasks import rebuild, rebuild_plan, system_keyspaces
from tasks.manifest import CassandraRecord, Manifest, NodeRecord, ObjectEntry, parse_manifest, write_manifest
from tasks.rebuild_plan import RebuildRefused
from tasks.repositories.local import LocalRepository


def entry(node: str, ks: str, table: str, tid: str = "0123") -> ObjectEntry:
    return ObjectEntry(key=f"b/{node}/{ks}/{table}-{tid}.tar.zst", size=1, sha256="0" * 64,
                       component="cassandra", node=node, keyspace=ks, table=table, table_dir=f"{table}-{tid}")


def manifest(bid: str, system: dict[str, list[str]] | None = None) -> Manifest:
    objects = [entry("n1", "thehive", "edgestore"), entry("n2", "thehive", "edgestore")]
    for node, kss in (system or {}).items():
        objects += [entry(node, ks, "local" if ks == "system" else "t") for ks in kss]
    return Manifest(backup_id=bid, kind="hot", stack="s", started_at="2026-11-28T01:00:00+00:00",
                    finished_at="2026-11-28T01:01:00+00:00", components=["cassandra"], objects=objects,
                    cassandra=CassandraRecord(
                        nodes=[NodeRecord(address="127.0.0.1", host_id="h1", name="n1"),
                               NodeRecord(address="127.0.0.2", host_id="h2", name="n2")],
                        system_keyspaces=system))


def test_system_keyspaces_known_and_discovered_but_never_the_backups_own():
    assert all(system_keyspaces.is_system_keyspace(k) for k in system_keyspaces.KNOWN)
    assert system_keyspaces.is_system_keyspace("system_cluster_metadata")  # a newer version's
    assert not system_keyspaces.is_system_keyspace("thehive")
    entries = [entry("n1", "system", "local"), entry("n1", "system_auth", "roles"),
               entry("n2", "system_schema", "tables"), entry("n1", "thehive", "edgestore"),
               entry("n1", "system_mine", "t")]
    assert system_keyspaces.archived(entries, ["thehive", "system_mine"]) == {
        "n1": ["system", "system_auth"], "n2": ["system_schema"]}


def test_system_keyspaces_are_written_only_when_recorded(tmp_path):
    repo = LocalRepository(str(tmp_path))
    write_manifest(repo, manifest("hot-20261128-010000-aaaa"))
    write_manifest(repo, manifest("hot-20261128-020000-bbbb", {"n1": ["system"]}))
    old = (tmp_path / "hot-20261128-010000-aaaa" / "manifest.json").read_bytes()
    assert b"system_keyspaces" not in old  # older manifests write back unchanged
    assert parse_manifest(old, "m").cassandra.system_keyspaces is None
    new = parse_manifest((tmp_path / "hot-20261128-020000-bbbb" / "manifest.json").read_bytes(), "m")
    assert new.cassandra.system_keyspaces == {"n1": ["system"]}


def test_latest_is_the_newest_backup_with_the_nodes_system_keyspaces(tmp_path):
    repo = LocalRepository(str(tmp_path))
    write_manifest(repo, manifest("hot-20261128-010000-aaaa", {"n1": ["system"], "n2": ["system"]}))
    write_manifest(repo, manifest("hot-20261128-020000-bbbb", {"n1": ["system"]}))
    write_manifest(repo, manifest("hot-20261128-030000-cccc"))
    assert rebuild_plan.choose_backup(repo, "n2", "latest").backup_id == "hot-20261128-010000-aaaa"
    assert rebuild_plan.choose_backup(repo, "n1", "").backup_id == "hot-20261128-020000-bbbb"
    with pytest.raises(RebuildRefused, match="the newest backup that has them is hot-20261128-010000-aaaa"):
        rebuild_plan.choose_backup(repo, "n2", "hot-20261128-030000-cccc")
    with pytest.raises(RebuildRefused, match="no complete backup with n3's system keyspaces"):
        rebuild_plan.choose_backup(repo, "n3", "latest")


def test_node_objects_problems_and_table_folders():
    m = manifest("hot-20261128-010000-aaaa", {"n2": ["system", "system_auth"]})
    objects = rebuild_plan.node_objects(m, "n2")
    assert sorted((o.keyspace, o.table) for o in objects) == [
        ("system", "local"), ("system_auth", "t"), ("thehive", "edgestore")]
    assert rebuild_plan.problems(m, "n2", "127.0.0.2") == []
    assert "had address 127.0.0.2" in rebuild_plan.problems(m, "n2", "127.0.0.9")[0]
    assert rebuild_plan.problems(m, "n1", "127.0.0.1") == ["the backup has no archive of n1's system.local"]
    settings = CassandraNodeSettings(data_dirs=["/d1", "/d2"])
    assert rebuild_plan.table_folder(settings, objects[0]) == "/d1/thehive/edgestore-0123"
    bad = objects[0].model_copy(update={"table_dir": ".."})
    with pytest.raises(RebuildRefused):
        rebuild_plan.table_folder(settings, bad)
    assert [f.role for f in rebuild_plan.node_folders(settings)] == [
        "data", "data1", "commitlog", "hints", "saved_caches"]


def test_repair_advice_follows_replication():
    live = {"system": {"class": "org.apache.cassandra.locator.LocalStrategy"},
            "thehive": {"class": "NetworkTopologyStrategy", "dc1": "3"},
            "system_auth": {"class": "SimpleStrategy", "replication_factor": "1"}}
    advisable, why = rebuild_plan.repair_advice("n2", live, "T")
    assert advisable and "nodetool repair --full" in why and "thehive" in why and "system_auth" not in why
    live["thehive"] = {"class": "NetworkTopologyStrategy", "dc1": "1"}
    assert rebuild_plan.repair_advice("n2", live, "T")[0] is False
    assert rebuild_plan.replication_factor({"class": "NetworkTopologyStrategy", "a": "3/1", "b": "2"}) == 5


def test_journal_keys():
    key = rebuild.new_key()
    assert key.startswith("rebuild-")
    assert rebuild.key_of_journal("/var/lib/cassandra/data", f"data.restoring-{key}.json") == key
    assert rebuild.key_of_journal("/var/lib/cassandra/data/", f"data.restoring-{key}.json") == key
    assert rebuild.key_of_journal("/x/data", "data.restoring-hot-20261128-010000-aaaa.json") is None
    assert rebuild.key_of_journal("/x/data", f"commitlog.restoring-{key}.json") is None


def test_stack_settings_for_a_rebuild():
    assert Cassandra().include_system_keyspaces is False
    s = CassandraNodeSettings(owner="cassandra:cassandra")
    assert s.hints_dir == "/var/lib/cassandra/hints" and s.saved_caches_dir == "/var/lib/cassandra/saved_caches"
    assert CassandraNodeSettings(owner="999").owner == "999"
    for bad in ("-R", "a b", "root:-x", "a:b:c"):
        with pytest.raises(ValidationError):
            CassandraNodeSettings(owner=bad)
