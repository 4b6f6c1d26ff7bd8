"""Disaster recovery (issue 10): everything back from the repository alone.

The whole stack is backed up (Cassandra 3 nodes, Elasticsearch, the attachments folder; then the
attachments of a bucket), then destroyed: every node's data with its system keyspaces, commitlog,
hints and saved caches, Elasticsearch's data folder and its snapshot folder, the attachments. A new
cluster (new host ids) and a new Elasticsearch without any snapshot repository start on the same
addresses, and ``restore`` brings every row, document and file back. The same backup is then
restored into an empty single-node cluster (the sstableloader path).

The session's clusters are shared with the other test files: their folders are moved aside, not
deleted, and put back afterwards (``CassandraCluster.start_empty(aside)`` / ``put_back``), so
later tests find the clusters exactly as they were.
"""
from __future__ import annotations

import shutil
import time
from types import SimpleNamespace

import pytest

from flows.hot_backup import hot_backup
from flows.restore import restore
from tests.stack import seed
from tests.stack.thehive_standin import get_status, wait_healthy

# A new cluster and the old one put back: two full starts of the 3-node cluster on a shared CPU.
pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def dr_backup(real_stack, cluster3, seeded3, standin3, session_stack):
    """One full hot backup of the running stack, and one of attachments kept in a bucket, in the
    same repository; with what each was taken from."""
    repo = real_stack.repository("local", "disaster")
    path, _ = session_stack(repo)
    s3 = real_stack.s3.client()
    bucket = real_stack.repository("s3", "dr-attachments")  # a fresh bucket
    attachments = {k: v for k, v in bucket.items() if k != "kind"} | {"kind": "s3"}
    seed.seed_bucket(s3, bucket["bucket"], count=6, size_kb=40, seed=10)
    bucket_path, _ = session_stack(repo, with_elasticsearch=False, with_thehive=False,
                                   attachments=attachments)
    t0 = time.monotonic()
    full = hot_backup(stack=str(path))["backup_id"]
    in_bucket = hot_backup(stack=str(bucket_path), components=["files"])["backup_id"]
    return SimpleNamespace(
        repo=repo, path=path, id=full, bucket_path=bucket_path, bucket_id=in_bucket,
        bucket=bucket["bucket"], backup_seconds=time.monotonic() - t0,
        rows=seed.cluster_fingerprint(cluster3),
        index=seed.index_fingerprint(real_stack.elasticsearch.client()),
        files=seed.files_fingerprint(real_stack.files_dir),
        objects=seed.bucket_fingerprint(s3, bucket["bucket"]))


def test_disaster_recovery_three_nodes_from_the_repository_alone(dr_backup, real_stack, cluster3,
                                                                 standin3, tmp_path, capsys):
    b, es_server, s3 = dr_backup, real_stack.elasticsearch, real_stack.s3.client()
    assert b.rows and b.index[0] > 0 and b.files and b.objects
    old_ids = cluster3.host_ids()
    aside = tmp_path / "old-cluster"  # the session's cluster, put back at the end

    t0 = time.monotonic()
    standin3.stop()  # TheHive down with everything else
    try:
        cluster3.start_empty(aside)
        es_server.start_empty()  # data folder and snapshot folder gone, no repository registered
        for child in real_stack.files_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        for key in b.objects:
            s3.delete_object(Bucket=b.bucket, Key=key)

        new_ids = cluster3.host_ids()
        assert set(new_ids) == set(old_ids) and not set(new_ids.values()) & set(old_ids.values())
        es = es_server.client()
        assert not es.snapshot.get_repository(name="_all")
        assert not es.indices.get(index="thehive_global*", allow_no_indices=True)
        assert not list(es_server.repo_dir.iterdir()) and not list(real_stack.files_dir.iterdir())
        assert seed.bucket_fingerprint(s3, b.bucket) == {}
        session = cluster3.session()
        try:
            assert not session.execute("SELECT keyspace_name FROM system_schema.keyspaces "
                                       "WHERE keyspace_name = 'thehive'").one()
        finally:
            session.cluster.shutdown()
        destroyed = time.monotonic()

        report = restore(stack=str(b.path), backup_id=b.id, confirm=True)
        restore(stack=str(b.bucket_path), backup_id=b.bucket_id, components=["files"], confirm=True)
        seconds = time.monotonic() - destroyed

        assert report["elasticsearch_put_back"]["put_back"] is True
        assert report["thehive"] == "healthy" and get_status(real_stack.standin_url)[0] == 200
        assert seed.cluster_fingerprint(cluster3) == b.rows  # every row
        assert seed.index_fingerprint(es) == b.index  # every document
        assert seed.files_fingerprint(real_stack.files_dir) == b.files  # every attachment
        assert seed.bucket_fingerprint(s3, b.bucket) == b.objects  # every object of the bucket
        with capsys.disabled():
            print(f"\n[disaster recovery, 3 nodes] restore from the repository alone: {seconds:.1f} s "
                  f"(method {report['cassandra']['thehive']['method']}); new cluster + new ES "
                  f"{destroyed - t0:.1f} s; both backups {b.backup_seconds:.1f} s")
    finally:
        cluster3.put_back(aside)  # the session's cluster as it was (host ids, every keyspace)
        if not standin3.running():
            standin3.start()
            wait_healthy(real_stack.standin_url, service=standin3)
    assert cluster3.host_ids() == old_ids


def test_disaster_recovery_into_a_single_node_cluster(dr_backup, real_stack, session_stack,
                                                      tmp_path, capsys):
    one = real_stack.cassandra1
    aside = tmp_path / "old-cluster"
    t0 = time.monotonic()
    try:
        one.start_empty(aside)
        path, _ = session_stack(dr_backup.repo, cluster=one, with_elasticsearch=False,
                                with_thehive=False)
        started = time.monotonic()
        report = restore(stack=str(path), backup_id=dr_backup.id, components=["cassandra"],
                         confirm=True)
        seconds = time.monotonic() - started
        assert report["cassandra"]["thehive"]["method"] == "sstableloader"
        assert seed.cluster_fingerprint(one) == dr_backup.rows  # every row, on one node
        session = one.session()
        try:  # the one-off loader role is gone
            roles = [r.role for r in session.execute("SELECT role FROM system_auth.roles")]
        finally:
            session.cluster.shutdown()
        assert not [r for r in roles if r.startswith("thehive_backup_loader_")]
        with capsys.disabled():
            print(f"\n[disaster recovery, 3 nodes into 1] restore: {seconds:.1f} s; "
                  f"new node {started - t0:.1f} s")
    finally:
        one.put_back(aside)
