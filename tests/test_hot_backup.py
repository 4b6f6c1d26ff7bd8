"""Hot backup against the real stack: 3-node Cassandra 4.1 with auth, Elasticsearch, attachments."""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from flows.hot_backup import BackupFailed, hot_backup
from flows.prune import prune
from tasks import cassandra as cass
from tasks.catalog import catalog
from tasks.hosts import SshHost, host_for
from tasks.lock import RepositoryLocked, repository_lock
from tasks.manifest import read_manifest
from tasks.preflight import PreflightFailed
from tasks.repositories import open_repository
from tasks.transfer import verify

pytestmark = pytest.mark.usefixtures("prefect_server", "seeded3")


def snapshots_left(stack) -> dict[str, set[str]]:
    left = {}
    for node in stack.nodes_with("cassandra"):
        with host_for(stack, node) as host:
            left[node.name] = cass.list_snapshots(host, stack.cassandra.settings_for(node.name))
    return left


@pytest.mark.parametrize("repo_kind", ["local", "sftp", "s3"])
def test_hot_backup_into_each_repository(make_stack, seeded3, repo_kind):
    path, stack = make_stack(repo_kind)
    result = hot_backup(stack=str(path), label=f"test {repo_kind}")

    with open_repository(stack) as repo:
        manifest = read_manifest(repo, result["backup_id"])
        problems = [verify(repo, o.key, o.size, o.sha256) for o in manifest.objects]
        assert problems == [None] * len(manifest.objects)
        rows = catalog(repo)
    assert rows[0]["id"] == result["backup_id"] and rows[0]["status"] == "complete"

    # Every table of every node, plus schema, archive and inventory.
    tables = [o for o in manifest.objects if o.table]
    assert {o.node for o in tables} == {n.name for n in stack.nodes_with("cassandra")}
    assert {o.table for o in tables} >= set(seeded3["rows"])
    c = manifest.cassandra
    assert [n.address for n in c.nodes] == sorted(n.address for n in stack.nodes_with("cassandra"))
    assert len({n.host_id for n in c.nodes}) == 3 and all(n.tokens for n in c.nodes)
    assert "CREATE TABLE thehive.edgestore" in c.keyspaces["thehive"].schema_cql
    es = manifest.elasticsearch
    assert es.state == "SUCCESS" and es.shards["failed"] == 0
    assert es.indices["thehive_global"].docs == seeded3["docs"]
    assert manifest.files.count == len(seeded3["files"])
    # No snapshot stays pinned on any node.
    assert snapshots_left(stack) == {n.name: set() for n in stack.nodes_with("cassandra")}


def test_failed_transfer_mid_stream_leaves_no_snapshot_and_no_manifest(make_stack, tmp_path):
    """The repository (a tmpfs just big enough for the keyspace, as preflight estimates it)
    fills up while 12 MiB of incompressible attachments stream into it beside the tables."""
    big = tmp_path / "attachments"
    big.mkdir()
    for i in range(6):
        (big / f"blob{i}").write_bytes(os.urandom(2 << 20))
    path, stack = make_stack("local", attachments={"kind": "folder", "node": "hive", "path": str(big)})
    mount = Path(stack.repository.path)
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        with pytest.raises(BackupFailed, match="No space left on device"):
            hot_backup(stack=str(path), components=["cassandra", "files"])
        with open_repository(stack) as repo:
            rows = catalog(repo)
            assert not [o for o in repo.list() if o.key.endswith("manifest.json")]
        assert rows and all(r["status"] == "incomplete" for r in rows)
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert snapshots_left(stack) == {n.name: set() for n in stack.nodes_with("cassandra")}


def test_elasticsearch_down_fails_in_preflight_and_leaves_nothing(make_stack, real_stack):
    path, stack = make_stack("local")
    es = real_stack.elasticsearch
    es.stop()
    try:
        with pytest.raises(PreflightFailed, match="elasticsearch"):
            hot_backup(stack=str(path))
    finally:
        es.start()
    assert not list(Path(stack.repository.path).rglob("*")) or not [
        p for p in Path(stack.repository.path).rglob("*") if p.is_file()]
    assert snapshots_left(stack) == {n.name: set() for n in stack.nodes_with("cassandra")}


def test_password_never_in_logs_arguments_or_manifest(make_stack, cluster3, caplog, monkeypatch):
    path, stack = make_stack("local")
    password = cluster3.password
    assert password
    argvs: list[list[str]] = []
    original = SshHost._open

    def spy(self, argv, timeout, **kwargs):
        argvs.append(list(argv))
        return original(self, argv, timeout, **kwargs)

    monkeypatch.setattr(SshHost, "_open", spy)
    caplog.set_level(logging.DEBUG)
    result = hot_backup(stack=str(path))
    assert argvs, "the spy saw no command"
    assert not [a for a in argvs if any(password in part for part in a)]
    assert password not in caplog.text
    with open_repository(stack) as repo:
        assert password.encode() not in repo.get_bytes(f"{result['backup_id']}/manifest.json")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert password not in ps


def test_reference_procedure_restores_our_table_archive(make_stack, real_stack, cluster3, tmp_path):
    """The guide's manual restore (tar xf + nodetool import) works on our per-table archive."""
    path, stack = make_stack("local", storage="archive")
    result = hot_backup(stack=str(path), components=["cassandra"], compression="bzip2")
    with open_repository(stack) as repo:
        manifest = read_manifest(repo, result["backup_id"])
        node = cluster3.nodes[0]
        archive = next(o for o in manifest.objects
                       if o.node == node.name and o.table == "system_properties")
        assert archive.key.endswith(".tbz")
        (tmp_path / "system_properties.tbz").write_bytes(repo.get_bytes(archive.key))
    session = cluster3.session()
    try:
        before = sorted(session.execute("SELECT key, column1, value FROM thehive.system_properties"))
        session.execute("CREATE TABLE thehive.props_copy (key blob, column1 blob, value blob, "
                        "PRIMARY KEY (key, column1))")
        # The reference steps, by hand: tar jxf <table>.tbz -C <dir>; nodetool import <ks> <table> <dir>
        target = node.home / "restore" / "props"
        target.mkdir(parents=True)
        subprocess.run(["tar", "jxf", str(tmp_path / "system_properties.tbz"), "-C", str(target)],
                       check=True)
        assert (target / "schema.cql").exists()
        for sibling in cluster3.nodes:  # each node imports its own archive, as the guide says
            if sibling is not node:
                other = next(o for o in manifest.objects
                             if o.node == sibling.name and o.table == "system_properties")
                d = sibling.home / "restore" / "props"
                d.mkdir(parents=True)
                with open_repository(stack) as repo:
                    (tmp_path / f"{sibling.name}.tbz").write_bytes(repo.get_bytes(other.key))
                subprocess.run(["tar", "jxf", str(tmp_path / f"{sibling.name}.tbz"), "-C", str(d)],
                               check=True)
                cluster3.nodetool(sibling, "import", "thehive", "props_copy", str(d))
        cluster3.nodetool(node, "import", "thehive", "props_copy", str(target))
        after = sorted(session.execute("SELECT key, column1, value FROM thehive.props_copy"))
        assert after == before and len(after) > 0
    finally:
        session.execute("DROP TABLE IF EXISTS thehive.props_copy")
        session.cluster.shutdown()
        for n in cluster3.nodes:  # the drop's auto_snapshot ("dropped-…") is not for the next test
            cluster3.nodetool(n, "clearsnapshot", "--all")


def test_a_locked_repository_refuses_a_second_run(make_stack):
    path, stack = make_stack("local")
    with repository_lock(stack, "restore (test)"):
        with pytest.raises(RepositoryLocked, match=r"restore \(test\)"):
            hot_backup(stack=str(path), components=["cassandra"])
    assert snapshots_left(stack) == {n.name: set() for n in stack.nodes_with("cassandra")}


def test_prune_keeps_the_newest_and_deletes_manifest_first(make_stack):
    path, stack = make_stack("local")
    first = hot_backup(stack=str(path), components=["cassandra"], record_digests=False)
    second = hot_backup(stack=str(path), components=["cassandra", "elasticsearch"],
                        record_digests=False)
    assert prune(stack=str(path), keep_last=1)["would_delete"] == [first["backup_id"]]  # dry run
    with open_repository(stack) as repo:
        assert len(catalog(repo)) == 2
    assert prune(stack=str(path), keep_last=1, dry_run=False)["deleted"] == [first["backup_id"]]
    with open_repository(stack) as repo:
        assert [r["id"] for r in catalog(repo)] == [second["backup_id"]]
        assert not list(repo.list(f"{first['backup_id']}/"))


def read_counts(stack, keyspace: str = "thehive") -> dict[str, dict[tuple[str, str], int]]:
    """Cassandra's own count of local reads of every table of the keyspace, on every node: both
    kinds, single-partition reads (``nodetool tablestats``' "Local read count") and range scans
    (what a ``SELECT *`` makes, counted apart), from the node's ``system_views`` virtual tables,
    which a session pinned to that node answers from its own metrics."""
    counts = {}
    for node in stack.nodes_with("cassandra"):
        with cass.cql_session(stack, contact_points=[node.address]) as session:
            counts[node.name] = {
                (kind, row.table_name): row.count
                for kind in ("local_read_latency", "local_scan_latency")
                for row in session.execute(f"SELECT keyspace_name, table_name, count FROM system_views.{kind}")
                if row.keyspace_name == keyspace}
    return counts


def test_a_default_backup_reads_no_row(make_stack):
    """No CQL read of the keyspace's rows (issue 9): its tables' read counts do not move on any
    node; the backup records SSTable fingerprints instead. Asked for, digests still read rows."""
    path, stack = make_stack("local")
    before = read_counts(stack)
    assert all(("local_scan_latency", "edgestore") in c for c in before.values())
    result = hot_backup(stack=str(path), components=["cassandra"])
    assert read_counts(stack) == before
    with open_repository(stack) as repo:
        manifest = read_manifest(repo, result["backup_id"])
    assert manifest.cassandra.keyspaces["thehive"].digests is None
    tables = [o for o in manifest.objects if o.table]
    assert all(o.fingerprint and len(o.fingerprint) == 64 and o.sstables is not None for o in tables)
    assert any(o.sstables for o in tables if o.table == "edgestore")

    hot_backup(stack=str(path), components=["cassandra"], record_digests=True)
    after = read_counts(stack)  # the metrics do see a full read
    assert all(after[n][("local_scan_latency", "edgestore")] > before[n][("local_scan_latency", "edgestore")]
               for n in after)
