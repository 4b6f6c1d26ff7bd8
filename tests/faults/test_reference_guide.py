"""The guide's own backups, restored as they come (issue 13, item 8).

The guide's example script runs on every node of the real 3-node Cassandra 4.1 cluster
(tests/stack/guide.py): every keyspace, system ones included, and the empty archives Cassandra 4.1
always leaves. A keyspace with RF 3 and one with RF 1 are restored from the ``archive_backup``
root with every row compared; with one host's folder missing, the RF 1 keyspace is refused before
anything is changed, and restored partially only when asked.
"""
from __future__ import annotations

import shutil

import pytest
import yaml

from flows.common import RestoreRefused
from flows.restore import restore
from tests.stack import seed
from tests.stack.guide import run_guide_backup

pytestmark = [pytest.mark.usefixtures("prefect_server", "seeded3"), pytest.mark.long]  # make test-long

DATE = "2026-11-27"
RF1_KEYSPACE = "guide_rf1"
RF1 = {"class": "SimpleStrategy", "replication_factor": 1}


def rows(cluster, keyspace: str) -> dict:
    session = cluster.session()
    try:
        return seed.keyspace_fingerprint(session, keyspace)
    finally:
        session.cluster.shutdown()


def table_ids(cluster, keyspace: str) -> dict:
    """A drop and re-create changes every id: equal ids prove the keyspace was not touched."""
    session = cluster.session()
    try:
        return {r.table_name: r.id for r in session.execute(
            "SELECT table_name, id FROM system_schema.tables WHERE keyspace_name = %s", [keyspace])}
    finally:
        session.cluster.shutdown()


@pytest.fixture(scope="module")
def guide_backup(real_stack, cluster3, seeded3, tmp_path_factory):
    """A second, RF 1 keyspace beside the seeded thehive (RF 3), then the guide's script on all
    three nodes at once into one ``archive_backup`` root (what their scp copies would make)."""
    session = cluster3.session()
    try:
        seed.create_keyspace(session, RF1_KEYSPACE, RF1)
        seed.seed_cassandra(session, RF1_KEYSPACE, size_mb=0.3, seed=11)
        # A table dropped earlier: its folder stays, without a snapshot, and the guide's tar
        # leaves a 14-byte empty archive for it on every node.
        session.execute(f"CREATE TABLE {RF1_KEYSPACE}.dropped_earlier (k int PRIMARY KEY)")
        session.execute(f"DROP TABLE {RF1_KEYSPACE}.dropped_earlier")
    finally:
        session.cluster.shutdown()
    before = {ks: rows(cluster3, ks) for ks in ("thehive", RF1_KEYSPACE)}
    root = tmp_path_factory.mktemp("guide") / "archive_backup"
    run_guide_backup(cluster3, root, DATE)
    yield {"root": root, "rows": before}
    session = cluster3.session()
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {RF1_KEYSPACE}")
    finally:
        session.cluster.shutdown()
    for node in cluster3.nodes:  # the restores' drops leave "dropped-…" snapshots (auto_snapshot)
        cluster3.nodetool(node, "clearsnapshot", "--all")


def stack_file(make_stack, replication: dict | None = None):
    """The harness's stack without TheHive and Elasticsearch (only Cassandra is restored)."""
    path, _ = make_stack("local", with_elasticsearch=False, with_thehive=False)
    if replication:
        data = yaml.safe_load(path.read_text())
        data["cassandra"]["replication"] = replication
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_the_guides_tree_holds_every_host_system_keyspaces_and_empty_archives(guide_backup, cluster3):
    root = guide_backup["root"]
    assert sorted(p.name for p in root.iterdir()) == sorted(n.name for n in cluster3.nodes)
    for node in cluster3.nodes:
        day = root / node.name / DATE
        assert {"system", "system_auth", "system_schema", "thehive", RF1_KEYSPACE} <= {
            p.name for p in day.iterdir()}
        for empty in ("system/_paxos_repair_state", f"{RF1_KEYSPACE}/dropped_earlier"):
            (archive,) = day.glob(f"{empty}*.tbz")  # _paxos_repair_state has no id
            assert archive.stat().st_size == 14


def test_rf3_keyspace_restores_from_the_archive_backup_root(real_stack, cluster3, guide_backup,
                                                            make_stack):
    path, root = stack_file(make_stack), str(guide_backup["root"])
    plan = restore(stack=path, reference_backup=root)
    lines = plan["reference"]
    assert plan["keyspaces"] == ["thehive"] and plan["objects_verified"] == 27  # 9 tables x 3 hosts
    assert [n for n in lines if n.startswith("skipped system keyspace system ")]
    assert [n for n in lines if n.startswith(f"skipped keyspace {RF1_KEYSPACE} ")]
    assert sorted(n for n in lines if n.startswith("host folder ")) == [
        f"host folder {n.name} → node {n.name}" for n in cluster3.nodes]
    assert any(n.startswith("keyspace thehive (replication class: NetworkTopologyStrategy, dc1: 3): "
                            "every row has a copy") for n in lines)

    session = cluster3.session()
    try:  # a live change the restore must undo
        session.execute("INSERT INTO thehive.edgestore (key, column1, value) VALUES (0xdead, 0xbeef, 0x00)")
    finally:
        session.cluster.shutdown()
    assert rows(cluster3, "thehive") != guide_backup["rows"]["thehive"]
    report = restore(stack=path, reference_backup=root, confirm=True)
    assert report["cassandra"]["thehive"]["method"] == "sstableloader"
    assert report["cassandra"]["thehive"]["archives"] == 27
    assert rows(cluster3, "thehive") == guide_backup["rows"]["thehive"]


def test_rf1_keyspace_needs_every_hosts_archives(real_stack, cluster3, guide_backup, make_stack,
                                                 tmp_path):
    path = stack_file(make_stack, RF1)
    lost = cluster3.nodes[2].name
    partial = tmp_path / "archive_backup"
    shutil.copytree(guide_backup["root"], partial)
    shutil.rmtree(partial / lost)
    before, ids = rows(cluster3, RF1_KEYSPACE), table_ids(cluster3, RF1_KEYSPACE)
    assert before == guide_backup["rows"][RF1_KEYSPACE]

    with pytest.raises(RestoreRefused) as refused:
        restore(stack=path, reference_backup=str(partial), keyspace=RF1_KEYSPACE, confirm=True)
    (problem,) = refused.value.problems
    assert problem.startswith(f"keyspace {RF1_KEYSPACE} (replication class: SimpleStrategy, "
                              f"replication_factor: 1): no archives from host(s) {lost}, ")
    assert "allow_partial=True" in problem
    assert rows(cluster3, RF1_KEYSPACE) == before and table_ids(cluster3, RF1_KEYSPACE) == ids

    report = restore(stack=path, reference_backup=str(partial), keyspace=RF1_KEYSPACE,
                     allow_partial=True, confirm=True)
    empty = [n for n in report["plan"]["reference"] if n.startswith("skipped empty archive ")]
    assert sorted(n.split("/")[0] for n in empty if "/dropped_earlier-" in n) == [
        f"skipped empty archive {n.name}" for n in cluster3.nodes[:2]]
    assert any(n.startswith("PARTIAL restore") for n in report["plan"]["reference"])
    assert report["cassandra"][RF1_KEYSPACE]["archives"] == 18
    got = rows(cluster3, RF1_KEYSPACE)
    total = sum(n for n, _ in before.values())
    assert 0 < sum(n for n, _ in got.values()) < total  # RF 1: the lost host's rows are not there
    assert all(got[t][0] <= before[t][0] for t in before)

    report = restore(stack=path, reference_backup=str(guide_backup["root"]), keyspace=RF1_KEYSPACE,
                     confirm=True)
    assert report["cassandra"][RF1_KEYSPACE]["archives"] == 27
    assert rows(cluster3, RF1_KEYSPACE) == guide_backup["rows"][RF1_KEYSPACE]


def test_a_damaged_archive_is_refused_by_name_before_any_change(cluster3, guide_backup, make_stack,
                                                                tmp_path):
    path = stack_file(make_stack)
    damaged = tmp_path / "archive_backup"
    shutil.copytree(guide_backup["root"], damaged)
    node = cluster3.nodes[1].name
    # the live table's archive (a table dropped by an earlier test left an empty one beside it)
    archive = max((damaged / node / DATE / "thehive").glob("edgestore-*.tbz"),
                  key=lambda p: p.stat().st_size)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    ids = table_ids(cluster3, "thehive")
    with pytest.raises(RestoreRefused) as refused:
        restore(stack=path, reference_backup=str(damaged), confirm=True)
    key = archive.relative_to(damaged).as_posix()
    assert refused.value.problems == [f"archive {key} is damaged: truncated (the bzip2 stream "
                                      "ends too early)"]
    assert table_ids(cluster3, "thehive") == ids
