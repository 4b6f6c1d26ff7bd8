"""Pure restore logic: method choice, schema rewriting, the reference guide's backup layout."""
from __future__ import annotations

import subprocess

from tasks.cassandra_restore import choose_method, rewrite_schema
from tasks.manifest import CassandraRecord
from tasks.reference import reference_manifest
from tasks.validate import check_schema

NODES = [{"address": "10.0.0.1", "host_id": "a", "tokens": ["-9"]},
         {"address": "10.0.0.2", "host_id": "b", "tokens": ["0"]}]


def test_same_host_ids_and_tokens_import_else_sstableloader():
    def topo(nodes):
        return CassandraRecord(nodes=nodes)

    assert choose_method(topo(NODES), topo(list(reversed(NODES)))) == "import"
    assert choose_method(topo(NODES), topo(NODES[:1])) == "sstableloader"
    moved = [dict(NODES[0], tokens=["5"]), NODES[1]]
    assert choose_method(topo(NODES), topo(moved)) == "sstableloader"


def test_schema_moves_to_the_target_keyspace_and_drops_table_ids():
    cql = ("CREATE KEYSPACE thehive WITH replication = {'class': 'SimpleStrategy'};\n"
           "CREATE TABLE thehive.edgestore (\n key blob PRIMARY KEY\n) WITH ID = 3b1a0c90-5d88-11ef-87c7-1fc3a94044f4\n"
           "  AND comment = 'thehive.x';\n"
           "CREATE INDEX ix ON thehive.edgestore (key);\n")
    out = rewrite_schema(cql, "thehive", "copy")
    assert out == ["CREATE TABLE copy.edgestore (\n key blob PRIMARY KEY\n) WITH comment = 'copy.x'",
                   "CREATE INDEX ix ON copy.edgestore (key)"]


def test_reference_layout_becomes_a_manifest(tmp_path):
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "nb-1-big-Data.db").write_bytes(b"data")
    (snap / "schema.cql").write_text("CREATE TABLE IF NOT EXISTS thehive.edgestore (key blob PRIMARY KEY) "
                                     "WITH ID = 3b1a0c90-5d88-11ef-87c7-1fc3a94044f4;")
    folder = tmp_path / "host1" / "2024-09-23"
    (folder / "thehive").mkdir(parents=True)
    subprocess.run(["tar", "cjf", str(folder / "thehive" / "edgestore-3b1a0c905d8811ef87c71fc3a94044f4.tbz"),
                    "-C", str(snap), "."], check=True)
    m = reference_manifest(folder)
    (o,) = m.objects
    assert (o.keyspace, o.table, o.node, o.compression) == ("thehive", "edgestore", "host1", "bzip2")
    assert check_schema(m, ["thehive"]) == []
    assert rewrite_schema(m.cassandra.keyspaces["thehive"].schema_cql, "thehive", "thehive") == [
        "CREATE TABLE IF NOT EXISTS thehive.edgestore (key blob PRIMARY KEY)"]
