"""Manifest format: version checked first, ids valid everywhere they are used, every section typed:
strict when written, tolerant of older manifests of the same format version when read."""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.layout import manifest_key, new_backup_id
from tasks.manifest import (
    CassandraRecord,
    ColdRecord,
    Manifest,
    ManifestError,
    ObjectEntry,
    TableDigest,
    parse_manifest,
    read_manifest,
    write_manifest,
)
from tasks.repositories.local import LocalRepository

CREATE_EDGESTORE = "CREATE TABLE thehive.edgestore ("


def test_backup_id_is_a_valid_snapshot_tag_es_name_and_key():
    bid = new_backup_id("hot", datetime(2026, 11, 27, 7, 21, tzinfo=UTC))
    assert re.fullmatch(r"hot-20261127-072100-[0-9a-f]{4}", bid)
    assert bid == bid.lower()


def test_round_trip_keeps_extra_fields():
    m = Manifest(backup_id="hot-1", kind="hot", stack="s", started_at="a", finished_at="b",
                 components=["cassandra"],
                 objects=[ObjectEntry(key="k", size=1, sha256="0" * 64, component="cassandra", seconds=1.5)])
    back = parse_manifest(m.model_dump_json().encode(), "m")
    assert back.objects[0].seconds == 1.5 and back.size == 1


@pytest.mark.parametrize("body,msg", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"format_version": 2}).encode(), "format_version 2 is not supported"),
    (json.dumps({"backup_id": "x"}).encode(), "format_version None"),
    (json.dumps({"format_version": 1, "kind": "hot"}).encode(), "backup_id"),
])
def test_unreadable_manifests_are_refused(body, msg):
    with pytest.raises(ManifestError, match=msg):
        parse_manifest(body, "repo/x/manifest.json")


# -- the typed sections ------------------------------------------------------------------------------
# Two manifests as tasks/manifest.py wrote them before its sections were typed (c65ba4c, sandbox runs
# of test_hot_backup and test_cold, trimmed to one object of each sort): every field they hold must
# read into a declared field and be written back unchanged.
DATA = Path(__file__).parent / "data"
WRITTEN = {kind: DATA / f"manifest-{kind}-c65ba4c.json" for kind in ("hot", "cold")}


@pytest.mark.parametrize("kind", sorted(WRITTEN))
def test_manifests_of_the_untyped_version_read_typed_and_write_back_unchanged(kind, tmp_path):
    raw = json.loads(WRITTEN[kind].read_text())
    m = parse_manifest(WRITTEN[kind].read_bytes(), kind)
    repo = LocalRepository(tmp_path)
    write_manifest(repo, m)
    assert json.loads(repo.get_bytes(manifest_key(m.backup_id))) == raw
    assert read_manifest(repo, m.backup_id) == m


def test_hot_sections_are_typed():
    m = parse_manifest(WRITTEN["hot"].read_bytes(), "hot")
    ks = m.cassandra.keyspaces["thehive"]
    assert ks.replication["dc1"] == "3" and ks.digests["edgestore"] == TableDigest(
        rows=1948, digest="e98c61d18abdfda08e9f95a77952d3cdd91e9a9c2fb64221f2ef1fd7e47dec43")
    assert CREATE_EDGESTORE in ks.schema_cql
    (node,) = m.cassandra.nodes
    assert (node.name, node.dc, node.tokens) == ("c41x3-n1", "dc1", ["-9223372036854775808"])
    es = m.elasticsearch
    assert (es.state, es.shards["failed"], es.indices["thehive_global"].docs) == ("SUCCESS", 0, 275)
    assert (m.files.kind, m.files.count, m.files.inventory_key) == (
        "folder", 12, "hot-20261128-042323-ea0b/files/inventory.json")
    table = m.objects[0]
    assert (table.table, table.table_dir, table.seconds, table.role) == (
        "edgestore", "edgestore-fd3ab0b0eadd11f18ca4cbf6389d7825", 0.753, None)


def test_cold_sections_are_typed():
    m = parse_manifest(WRITTEN["cold"].read_bytes(), "cold")
    archive, inventory = m.objects
    assert (archive.role, archive.service, archive.name, archive.bytes, archive.inventory_key) == (
        "archive", "thehive", "attachments", 589824, inventory.key)
    assert (inventory.role, inventory.files, inventory.inventory_key) == ("inventory", None, None)
    (folder,) = m.cold.folders
    assert (folder.service, folder.auto, folder.bytes_measured) == ("thehive", False, 692224)
    assert (m.cold.restart, m.cold.downtime_seconds, m.cold.events[1]["closed"]) == (
        "ok", 103.12, ["127.0.0.61:9000"])


def full_hot() -> Manifest:
    """Built as the writers build it: sections as plain records, coerced and checked on the way in."""
    bid = "hot-20261127-072100-3fa2"
    return Manifest(
        backup_id=bid, kind="hot", stack="s", label="l", started_at="a", finished_at="b",
        components=["cassandra", "elasticsearch", "files"],
        objects=[ObjectEntry(key=f"{bid}/cassandra/n1/thehive/edgestore-1.tar.zst", size=3, sha256="0" * 64,
                             component="cassandra", node="n1", keyspace="thehive", table="edgestore",
                             table_dir="edgestore-1", compression="zstd", raw_size=10, files=2, seconds=0.5)],
        cassandra={"version": "4.1.10", "cluster_name": "c", "partitioner": "p",
                   "nodes": [{"address": "10.0.0.1", "host_id": "h", "dc": "dc1", "rack": "r1",
                              "tokens": ["-9"], "name": "n1"}],
                   "keyspaces": {"thehive": {"schema_cql": CREATE_EDGESTORE, "replication": {"class": "S"},
                                             "tables": {"edgestore": "1"},
                                             "digests": {"edgestore": {"rows": 1, "digest": "ab"}}}}},
        elasticsearch={"version": "8", "repository": "r", "repository_type": "fs", "snapshot": bid,
                       "uuid": "u", "state": "SUCCESS", "indices": {"i": {"docs": 1, "shards": 1}},
                       "shards": {"total": 1, "failed": 0, "successful": 1}, "seconds": 0.1},
        files={"kind": "s3", "bucket": "b", "prefix": "p/", "count": 1, "bytes": 2,
               "inventory_key": f"{bid}/files/inventory.json"},
        timings={"cassandra": 1.0, "total": 2.0})


def full_cold() -> Manifest:
    bid = "cold-20261127-072100-3fa2"
    common = dict(component="cassandra", node="n1", service="cassandra", name="data", path="/d")
    return Manifest(
        backup_id=bid, kind="cold", stack="s", started_at="a", finished_at="b", components=["cassandra"],
        objects=[ObjectEntry(key=f"{bid}/cold/n1/cassandra/data.tar.gz", size=3, sha256="0" * 64,
                             compression="gzip", raw_size=10, files=2, role="archive", bytes=8,
                             inventory_key=f"{bid}/cold/n1/cassandra/data.inventory.json", seconds=1.0,
                             **common),
                 ObjectEntry(key=f"{bid}/cold/n1/cassandra/data.inventory.json", size=1, sha256="1" * 64,
                             role="inventory", **common)],
        cold={"folders": [{"service": "cassandra", "node": "n1", "name": "data", "path": "/d", "auto": True,
                           "bytes_measured": 4096}],
              "notes": ["n"], "restart": "FAILED: x", "downtime_seconds": 3.5,
              "events": [{"t": 1.0, "event": "stop", "service": "cassandra", "node": "n1"}]},
        timings={"stop": 1.0, "copy": 1.0, "start": 1.0, "downtime": 3.5, "total": 4.0})


@pytest.mark.parametrize("build", [full_hot, full_cold])
def test_full_manifests_round_trip(build, tmp_path):
    m = build()
    repo = LocalRepository(tmp_path)
    write_manifest(repo, m)
    back = read_manifest(repo, m.backup_id)
    assert back == m and back.model_dump() == m.model_dump()
    assert isinstance(back.cassandra or back.cold, (CassandraRecord, ColdRecord))


def test_an_older_manifest_reads_missing_fields_default_unknown_fields_ignored():
    raw = json.loads(WRITTEN["cold"].read_text())
    del raw["label"], raw["timings"], raw["cold"]["notes"], raw["cold"]["downtime_seconds"]
    for entry in raw["objects"]:
        del entry["compression"], entry["path"]
    del raw["cold"]["folders"][0]["auto"], raw["cold"]["folders"][0]["bytes_measured"]
    raw["written_by_a_later_version"] = {"x": 1}
    raw["objects"][0]["encryption"] = "aes"
    raw["cold"]["folders"][0]["shared"] = True
    raw["files"]["digest_of_everything"] = "ab"
    m = parse_manifest(json.dumps(raw).encode(), "older")
    assert (m.label, m.timings, m.cold.notes, m.cold.downtime_seconds) == ("", {}, [], None)
    assert [(o.compression, o.path) for o in m.objects] == [("none", None), ("none", None)]
    assert (m.cold.folders[0].auto, m.cold.folders[0].bytes_measured) == (False, None)
    dumped = m.model_dump()
    assert "written_by_a_later_version" not in dumped and "encryption" not in dumped["objects"][0]
    assert "shared" not in dumped["cold"]["folders"][0] and "digest_of_everything" not in dumped["files"]


@pytest.mark.parametrize("unknown", [
    lambda: Manifest(**full_hot().model_dump(), surprise=1),
    lambda: ObjectEntry(key="k", size=1, sha256="0", component="files", colour="blue"),
    lambda: Manifest(**dict(full_cold().model_dump(), cold={"folders": [], "pause": 3})),
    lambda: Manifest(**dict(full_hot().model_dump(), elasticsearch={
        "repository": "r", "snapshot": "s", "indices": {"i": {"docs": 1, "size": 9}}})),
])
def test_writing_an_unknown_field_fails(unknown):
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        unknown()


def test_an_unknown_field_set_after_building_is_refused_too():
    entry = full_cold().objects[0]
    with pytest.raises(ValueError):
        entry.colour = "blue"
