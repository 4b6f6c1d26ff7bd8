"""Restore against the real stack: round trips that compare every row, document and byte."""
from __future__ import annotations

import io
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from flows.hot_backup import hot_backup
from flows.restore import RestoreRefused, restore
from flows.verify import VerificationFailed, restore_drill
from tasks.manifest import read_manifest, write_manifest
from tasks.repositories import open_repository
from tests.stack import seed
from tests.stack.guide import run_guide_backup
from tests.stack.thehive_standin import get_status

pytestmark = pytest.mark.usefixtures("prefect_server", "seeded3")


def fingerprints(real_stack, cluster, keyspace="thehive"):
    return seed.cluster_fingerprint(cluster, keyspace)


def destroy(real_stack, cluster):
    session = cluster.session()
    try:
        session.execute("DROP KEYSPACE IF EXISTS thehive")
    finally:
        session.cluster.shutdown()
    real_stack.elasticsearch.client().indices.delete(index="thehive_global*", expand_wildcards="all")
    shutil.rmtree(real_stack.files_dir)
    assert not list(real_stack.files_dir.iterdir())  # the property recreated it empty


def test_dry_run_changes_nothing(backup3, make_stack):
    path, _ = make_stack(backup3["repo"])
    plan = restore(stack=str(path), backup_id=backup3["id"])
    assert plan["dry_run"] and plan["cassandra_method"] == "import"


def test_round_trip_same_cluster_import(real_stack, cluster3, backup3, make_stack):
    path, _ = make_stack(backup3["repo"])
    destroy(real_stack, cluster3)
    report = restore(stack=str(path), backup_id=backup3["id"], confirm=True)
    assert report["cassandra"]["thehive"]["method"] == "import"
    assert fingerprints(real_stack, cluster3) == backup3["rows"]
    assert seed.index_fingerprint(real_stack.elasticsearch.client()) == backup3["index"]
    assert seed.files_fingerprint(real_stack.files_dir) == backup3["files"]
    assert report["thehive"] == "healthy" and get_status(real_stack.standin_url)[0] == 200


def test_rebuild_strategy_lets_thehive_rebuild_the_index(real_stack, cluster3, backup3, make_stack):
    path, stack = make_stack(backup3["repo"])
    real_stack.elasticsearch.client().indices.delete(index="thehive_global*", expand_wildcards="all")
    restore(stack=str(path), backup_id=backup3["id"], components=["cassandra", "elasticsearch"],
            index_strategy="rebuild", confirm=True)
    code, status = get_status(real_stack.standin_url)
    assert code == 200 and status["rebuilt_index"] is True
    assert seed.index_fingerprint(real_stack.elasticsearch.client()) == backup3["index"]
    conf = open(stack.service("thehive").config_file).read()
    assert "forceDropAndRebuildIndex = true" not in conf  # removed once healthy


def corrupt_copy(real_stack, backup3, name, damage):
    """A copy of the backup in a new local repository, damaged by ``damage(repo, manifest)``."""
    src = backup3["repo"]["path"]
    dst = real_stack.root / "repos" / name
    shutil.copytree(f"{src}/{backup3['id']}", dst / backup3["id"])
    if (Path(src) / "sstables").is_dir():  # incremental mode's shared components
        shutil.copytree(Path(src) / "sstables", dst / "sstables")
    repo_settings = {"kind": "local", "path": str(dst)}
    return repo_settings, dst


@pytest.mark.parametrize("damage", ["flipped-byte", "missing-object", "hostile-member"])
def test_damaged_backup_is_refused_and_live_keyspace_untouched(real_stack, cluster3, backup3,
                                                               make_stack, damage):
    repo_settings, dst = corrupt_copy(real_stack, backup3, f"damaged-{damage}", damage)
    path, stack = make_stack(repo_settings)
    with open_repository(stack) as repo:
        manifest = read_manifest(repo, backup3["id"])
        table = next(o for o in manifest.objects if o.table == "edgestore")
        # archive storage: the table's archive; incremental storage: one of its components
        damaged = table.parts[0].key if table.parts and damage != "hostile-member" else table.key
        target = dst / damaged
        if damage == "flipped-byte":
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0x01
            target.write_bytes(bytes(data))
        elif damage == "missing-object":
            target.unlink()
        elif table.parts:  # a component whose path leaves the table's folder
            table.parts[0].path = "../../../../etc/thb-pwned"
            write_manifest(repo, manifest)
        else:  # a hostile archive with a correct checksum in the manifest
            import hashlib

            import zstandard
            bio = io.BytesIO()
            with tarfile.open(fileobj=bio, mode="w") as t:
                m = tarfile.TarInfo("../../../../etc/thb-pwned")
                m.size = 1
                t.addfile(m, io.BytesIO(b"x"))
            blob = zstandard.ZstdCompressor().compress(bio.getvalue())
            target.write_bytes(blob)
            table.size, table.sha256 = len(blob), hashlib.sha256(blob).hexdigest()
            write_manifest(repo, manifest)
    before = fingerprints(real_stack, cluster3)
    with pytest.raises(RestoreRefused) as refused:
        restore(stack=str(path), backup_id=backup3["id"], confirm=True)
    expected = {"flipped-byte": "SHA-256 mismatch", "missing-object": "missing",
                "hostile-member": "unsafe archive"}[damage]
    assert any(expected in p and damaged in p for p in refused.value.problems), refused.value.problems
    assert fingerprints(real_stack, cluster3) == before
    assert not __import__("os").path.exists("/etc/thb-pwned")


def test_round_trip_on_cassandra_5(real_stack, make_stack):
    five = real_stack.cassandra5
    session = five.session()
    try:
        seed.create_keyspace(session, "thehive", {"class": "NetworkTopologyStrategy", "dc1": 1})
        seed.seed_cassandra(session, "thehive", size_mb=1, seed=5)
    finally:
        session.cluster.shutdown()
    before = fingerprints(real_stack, five)
    path, _ = make_stack("local", cluster=five, with_elasticsearch=False, with_thehive=False)
    result = hot_backup(stack=str(path), components=["cassandra"])
    session = five.session()
    session.execute("DROP KEYSPACE thehive")
    session.cluster.shutdown()
    report = restore(stack=str(path), backup_id=result["backup_id"], components=["cassandra"],
                     confirm=True)
    assert report["cassandra"]["thehive"]["method"] == "import"
    assert fingerprints(real_stack, five) == before


def test_backup_made_with_the_reference_guides_commands_restores(real_stack, cluster3, backup3,
                                                                 make_stack, tmp_path):
    """The guide's own script (tests/stack/guide.py) on one node, restored from its date folder:
    its system keyspaces and empty archives are skipped; RF 3 keeps every row on that node."""
    node = cluster3.nodes[0]
    date = "2026-11-27"
    run_guide_backup(cluster3, tmp_path / "archive_backup", date, nodes=[node])
    folder = tmp_path / "archive_backup" / node.name / date
    path, _ = make_stack(backup3["repo"])
    session = cluster3.session()
    session.execute("DROP KEYSPACE thehive")
    session.cluster.shutdown()
    report = restore(stack=str(path), reference_backup=str(folder), confirm=True)
    assert report["cassandra"]["thehive"]["method"] == "sstableloader"
    assert fingerprints(real_stack, cluster3) == backup3["rows"]


def test_restore_drill_proves_what_it_can(real_stack, cluster3, make_stack):
    """A table written since a default backup cannot be proved by it: the drill says which and
    fails; a backup with recorded digests (the scheduled verification) proves every table."""
    path, stack = make_stack("local")
    default = hot_backup(stack=str(path), components=["cassandra"])
    recorded = hot_backup(stack=str(path), components=["cassandra"], record_digests=True)
    session = cluster3.session()
    try:
        session.execute("INSERT INTO thehive.system_properties (key, column1, value) "
                        "VALUES (0xd1, 0xd1, 0xd1)")
        t0 = time.monotonic()
        with pytest.raises(VerificationFailed,
                           match=r"not proved, so nothing was restored.*\['system_properties'\]"):
            restore_drill(stack=str(path), backup_id=default["backup_id"])
        print(f"drill refused before restoring in {time.monotonic() - t0:.1f} s")
        session.cluster.refresh_schema_metadata()
        assert "thehive_restore_drill" not in session.cluster.metadata.keyspaces
        drill = restore_drill(stack=str(path), backup_id=recorded["backup_id"])
        assert drill["identical"] and set(drill["compared"].values()) == {"recorded"}
        assert drill["not_compared"] == []
    finally:
        session.execute("DELETE FROM thehive.system_properties WHERE key = 0xd1")
        session.cluster.shutdown()
