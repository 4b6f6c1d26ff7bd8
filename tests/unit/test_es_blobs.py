"""Shared Elasticsearch snapshot blobs in a real local repository: keys valid for any ES file
name, not taken for foreign folders by the catalog, swept only when no kept backup refers to them."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tasks import layout
from tasks.catalog import scan
from tasks.es_repository import plan_sweep, sweep
from tasks.manifest import ElasticsearchRecord, Manifest, ObjectEntry, write_manifest
from tasks.repositories.base import validate_key
from tasks.repositories.local import LocalRepository

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
OLD, NEW = "hot-20261127-020000-aaaa", "hot-20261128-020000-bbbb"
ES_UUID = "-Ixr5z5OQ668iypb1nw96w"


@pytest.mark.parametrize("path", ["indices/_abc/0/__XAOMCgBQSrWfy-4cn5RINQ", "snap--x.dat",
                                  "indices/-q/meta-.dat", "a/.hidden", "odd%name/x"])
def test_every_es_file_name_makes_a_valid_key_and_parses_back(path):
    key = layout.es_blob_key(ES_UUID, path)
    assert validate_key(key) == key
    parsed = layout.parse_key(key)
    assert (parsed.kind, parsed.es_repository, parsed.path) == ("es-blob", ES_UUID, path)
    assert key.startswith(layout.es_blobs_prefix(ES_UUID))
    assert layout.backup_id_of(key) is None


def test_repository_metadata_is_never_a_shared_blob():
    for name in ("index-3", "index.latest"):
        with pytest.raises(ValueError):
            layout.es_blob_key(ES_UUID, name)
        assert layout.parse_key(layout.es_metadata_key(NEW, name)).kind == "es-metadata"


def backup(repo: LocalRepository, backup_id: str, blobs: dict[str, bytes]) -> None:
    files = []
    for path, data in blobs.items():
        key = layout.es_blob_key(ES_UUID, path)
        repo.put_bytes(key, data)
        files.append(ObjectEntry(key=key, size=len(data), sha256="0" * 64, component="elasticsearch",
                                 path=path))
    write_manifest(repo, Manifest(
        backup_id=backup_id, kind="hot", stack="s", started_at="x", finished_at="x",
        components=["elasticsearch"],
        elasticsearch=ElasticsearchRecord(repository="r", snapshot=backup_id, files=files)))


def test_sweep_deletes_only_blobs_no_kept_backup_refers_to(tmp_path):
    repo = LocalRepository(tmp_path / "repo")
    backup(repo, OLD, {"indices/i/0/__a": b"a", "indices/i/0/__b": b"bb"})
    backup(repo, NEW, {"indices/i/0/__b": b"bb", "indices/i/0/__c": b"ccc"})
    orphan = layout.es_blob_key(ES_UUID, "indices/i/0/__orphan")  # a failed run's copy
    repo.put_bytes(orphan, b"dddd")
    found = scan(repo)
    assert found.foreign == [] and [r["id"] for r in found.rows] == [NEW, OLD]

    assert plan_sweep(repo, [], NOW, 24).unreferenced == [orphan]
    plan = plan_sweep(repo, [], NOW, 24, deleted=frozenset({OLD}))  # OLD pruned in the same run
    assert plan.unreferenced == sorted([orphan, layout.es_blob_key(ES_UUID, "indices/i/0/__a")])
    assert (plan.bytes, plan.kept) == (5, 2)
    assert sweep(repo, plan) == 2
    assert sorted(o.key for o in repo.list(layout.ES_BLOBS_PREFIX)) == sorted(
        layout.es_blob_key(ES_UUID, p) for p in ("indices/i/0/__b", "indices/i/0/__c"))


def test_no_sweep_while_a_recent_backup_may_still_be_writing_or_a_manifest_is_unreadable(tmp_path):
    repo = LocalRepository(tmp_path / "repo")
    backup(repo, NEW, {"indices/i/0/__b": b"bb"})
    repo.put_bytes(layout.es_blob_key(ES_UUID, "indices/i/0/__new"), b"n")
    running = "hot-20261128-115000-cccc"
    plan = plan_sweep(repo, [running], NOW, 24)
    assert plan.unreferenced == [] and running in plan.skipped
    assert plan_sweep(repo, ["hot-20261125-000000-dddd"], NOW, 24).unreferenced != []  # old failed run
    repo.put_bytes(layout.manifest_key(OLD), b"{not json")
    assert plan_sweep(repo, [], NOW, 24).skipped == "a manifest is unreadable"
