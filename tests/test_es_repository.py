"""Elasticsearch snapshots in our repository (issue 10), on the real stack.

Two hot backups copy the fs snapshot repository's files (the second only the new ones); then
Elasticsearch loses its data folder and its snapshot folder and starts empty, with no snapshot
repository registered; the restore puts the files back, registers the repository and restores
every document; prune then removes exactly the blobs no kept backup refers to.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

from elasticsearch import helpers

from flows.hot_backup import hot_backup
from flows.prune import prune
from flows.restore import restore
from flows.verify import verify_backup
from tasks import layout
from tasks.manifest import Manifest, read_manifest
from tasks.repositories import open_repository
from tests.stack import seed

INDEX = "thehive_global"


def write_docs(es, start: int, count: int) -> None:
    helpers.bulk(es, ({"_index": INDEX, "_id": f"doc-{i}", "_source": {"n": i, "title": f"case {i}",
                                                                         "body": "x" * (i % 300)}}
                      for i in range(start, start + count)), refresh=True)


def es_files(repo_dir: Path) -> dict[str, str]:
    """What ES keeps in its snapshot folder: path -> SHA-256."""
    return {str(p.relative_to(repo_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in repo_dir.rglob("*") if p.is_file()}


def blob_keys(m: Manifest) -> set[str]:
    assert m.elasticsearch and m.elasticsearch.files
    return {f.key for f in m.elasticsearch.files if f.key.startswith(layout.ES_BLOBS_PREFIX)}


def test_es_snapshot_files_survive_the_loss_of_elasticsearch(real_stack, make_stack, prefect_server):
    t0 = time.monotonic()
    server = real_stack.elasticsearch
    es = server.client()
    es.indices.delete(index="thehive_global*", allow_no_indices=True, expand_wildcards="all")
    es.indices.create(index=INDEX, settings={"number_of_shards": 2, "number_of_replicas": 0})
    write_docs(es, 0, 400)
    # Elasticsearch alone: the stack file's Cassandra node is never reached, so never started
    path, stack = make_stack("local", cluster=real_stack.cassandra1_unstarted, with_thehive=False)

    # 1. first backup: every file of the fs repository, recorded with its SHA-256
    first = hot_backup(stack=str(path), components=["elasticsearch"])["backup_id"]
    with open_repository(stack) as repo:
        m1 = read_manifest(repo, first)
    r1 = m1.elasticsearch
    assert r1 and r1.files and r1.generation is not None
    on_disk = es_files(server.repo_dir)
    assert {f.path: f.sha256 for f in r1.files} == on_disk  # the whole folder at that generation
    assert r1.copied_files == len(r1.files) and r1.copied_bytes == sum(f.size for f in r1.files)
    assert {f.key for f in r1.files} - blob_keys(m1) == {
        layout.es_metadata_key(first, f"index-{r1.generation}"), layout.es_metadata_key(first, "index.latest")}

    # 2. second backup after a few more documents: only the new files are copied
    write_docs(es, 400, 60)
    with open_repository(stack) as repo:
        before = {o.key: o.size for o in repo.list(layout.ES_BLOBS_PREFIX)}
    second = hot_backup(stack=str(path), components=["elasticsearch"])["backup_id"]
    with open_repository(stack) as repo:
        m2 = read_manifest(repo, second)
        after = {o.key: o.size for o in repo.list(layout.ES_BLOBS_PREFIX)}
    r2 = m2.elasticsearch
    assert r2 and r2.files
    new_blobs = blob_keys(m2) - set(before)
    assert new_blobs and set(after) == set(before) | new_blobs
    assert r2.copied_files == len(new_blobs) + 2  # and this backup's index-N, index.latest
    assert r2.copied_bytes == sum(after[k] for k in new_blobs) + sum(
        f.size for f in r2.files if not f.key.startswith(layout.ES_BLOBS_PREFIX))
    assert r2.copied_bytes < sum(f.size for f in r2.files) / 2  # the first backup's blobs reused
    expected = seed.index_fingerprint(es, INDEX)
    assert expected[0] == 460

    # 3. disaster: data and snapshot folder gone, a new empty cluster, no repository registered
    server.start_empty()
    es = server.client()
    assert not es.snapshot.get_repository(name="_all")
    assert not es.indices.get(index="thehive_global*", allow_no_indices=True)
    assert es_files(server.repo_dir) == {}

    report = restore(stack=str(path), backup_id=second, components=["elasticsearch"], confirm=True)
    assert report["elasticsearch_put_back"]["put_back"] is True
    assert seed.index_fingerprint(es, INDEX) == expected  # every document, compared
    assert es.snapshot.get(repository="thehive-backup", snapshot=second)["snapshots"][0]["state"] == "SUCCESS"
    put_back = es_files(server.repo_dir)
    assert {f.path: f.sha256 for f in r2.files}.items() <= put_back.items()
    assert verify_backup(stack=str(path), backup_id=second)["ok"]

    # 4. prune keeps the second backup: only blobs it does not refer to go (and a failed run's)
    orphan = layout.es_blob_key(r2.repository_uuid or "", "indices/gone/0/__orphan")
    with open_repository(stack) as repo:
        repo.put_bytes(orphan, b"left by a killed backup")
    result = prune(stack=str(path), keep_last=1, dry_run=False)
    assert result["deleted"] == [first]
    with open_repository(stack) as repo:
        left = {o.key for o in repo.list(layout.ES_BLOBS_PREFIX)}
    assert left == blob_keys(m2)
    assert result["es_blobs"]["deleted"] == len(set(after) - blob_keys(m2)) + 1 > 1
    assert verify_backup(stack=str(path), backup_id=second)["ok"]
    print(f"ES repository copy: {len(r1.files)} files / {r1.copied_bytes} B first, "
          f"{r2.copied_files} files / {r2.copied_bytes} B second; {time.monotonic() - t0:.0f}s")
