"""Encrypted repositories on the real stack (docs/FORMAT.md, "Encryption"): a full round trip per
repository kind with a scan of every stored byte, a wrong or missing key refused before anything
changes, and key rotation with backups under both keys restored."""
from __future__ import annotations

import os
import shutil

import pytest

from flows.hot_backup import hot_backup
from flows.restore import RestoreRefused, restore
from flows.verify import VerificationFailed, restore_drill, verify_backup
from tasks.catalog import catalog
from tasks.manifest import read_manifest
from tasks.repositories import open_repository
from tasks.repositories.crypto import KeyUnavailable, MasterKey
from tasks.repositories.encrypting import EncryptingRepository
from tests.stack import seed
from tests.stack.thehive_standin import get_status

# Drill and restores run nodetool import on three nodes: minutes on a loaded machine.
pytestmark = [pytest.mark.usefixtures("prefect_server", "seeded3", "standin3"), pytest.mark.timeout(2400)]

KEYS = {"A": os.urandom(32), "B": os.urandom(32)}
ENV = {"A": "THB_TEST_REPO_KEY_A", "B": "THB_TEST_REPO_KEY_B"}


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
    for name, raw in KEYS.items():
        monkeypatch.setenv(ENV[name], raw.hex())


def key_id(name: str) -> str:
    return MasterKey.from_bytes(KEYS[name], "key").key_id


def encrypted(real_stack, kind: str, name: str) -> dict:
    """A fresh repository of ``kind`` encrypted under key A."""
    return with_key(real_stack.repository(kind, name), "A")


def with_key(settings: dict, key: str, old: tuple[str, ...] = ()) -> dict:
    return {**settings, "encryption": {"key": {"env": ENV[key]}, "old_keys": [{"env": ENV[k]} for k in old]}}


def stored_objects(stack) -> dict[str, bytes]:
    """Every object of the repository as stored (under the encrypting layer), the lock included."""
    with open_repository(stack) as repo:
        assert isinstance(repo, EncryptingRepository)
        return {o.key: repo.inner.get_bytes(o.key) for o in repo.inner.list()}


def plaintexts(stack) -> bytes:
    with open_repository(stack) as repo:
        return b"".join(repo.get_bytes(o.key) for o in repo.list())


def needles(real_stack, cluster, seeded) -> dict[str, bytes]:
    """Distinctive bytes of each component: partition keys of the seeded rows (raw in SSTable
    index files), a slice of every attachment, and one Elasticsearch document's content."""
    session = cluster.session()
    try:
        keys = [r.key for r in session.execute("SELECT DISTINCT key FROM thehive.edgestore LIMIT 5")]
    finally:
        session.cluster.shutdown()
    found = {f"row key {k.hex()}": k for k in keys}
    for rel in seeded["files"]:
        data = (real_stack.files_dir / rel).read_bytes()
        found[f"attachment {rel[:12]}"] = data[len(data) // 2:len(data) // 2 + 32]
    hit = real_stack.elasticsearch.client().search(index=seed.INDEX, size=1)["hits"]["hits"][0]
    found["es document digest"] = hit["_source"]["digest"].encode()
    found["es document id"] = hit["_id"].encode()
    return found


def damage_live_data(real_stack, cluster, seeded) -> None:
    """Rows, one attachment and one document gone: what the restore must bring back."""
    session = cluster.session()
    try:
        key = next(iter(session.execute("SELECT DISTINCT key FROM thehive.edgestore LIMIT 1"))).key
        session.execute("DELETE FROM thehive.edgestore WHERE key = %s", (key,))
    finally:
        session.cluster.shutdown()
    (real_stack.files_dir / next(iter(seeded["files"]))).unlink()
    es = real_stack.elasticsearch.client()
    doc = es.search(index=seed.INDEX, size=1)["hits"]["hits"][0]
    es.delete(index=seed.INDEX, id=doc["_id"], refresh=True)


def test_wrong_or_missing_key_is_refused_before_anything_changes(real_stack, cluster3, make_stack,
                                                                 monkeypatch):
    settings = encrypted(real_stack, "local", "enc-wrong-key")
    path, _ = make_stack(settings)
    bid = hot_backup(stack=str(path), components=["cassandra"])["backup_id"]
    rows = seed.cluster_fingerprint(cluster3)

    wrong_path, wrong = make_stack(with_key(settings, "B"))
    with pytest.raises(RestoreRefused) as refused:
        restore(stack=str(wrong_path), backup_id=bid, confirm=True)
    (problem,) = refused.value.problems
    assert f"key id {key_id('A')}" in problem and f"{key_id('B')} (key)" in problem
    with pytest.raises(KeyUnavailable, match=key_id("A")):
        verify_backup(stack=str(wrong_path), backup_id="latest")  # 'latest' refuses, never picks older
    with open_repository(wrong) as repo:
        assert catalog(repo)[0]["status"].startswith("unreadable: ") and key_id("A") in catalog(repo)[0]["status"]

    monkeypatch.delenv(ENV["A"])
    with pytest.raises(Exception, match=f"repository.encryption.key: environment variable {ENV['A']} is not set"):
        restore(stack=str(path), backup_id=bid, confirm=True)
    assert seed.cluster_fingerprint(cluster3) == rows
    assert get_status(real_stack.standin_url)[0] == 200  # TheHive never stopped


def test_rotation_backups_under_each_key_are_restorable(real_stack, cluster3, seeded3, make_stack):
    settings = encrypted(real_stack, "local", "enc-rotation")
    path_a, _ = make_stack(settings)
    first = hot_backup(stack=str(path_a), components=["files"])["backup_id"]
    path_b, stack_b = make_stack(with_key(settings, "B", old=("A",)))
    second = hot_backup(stack=str(path_b), components=["files"])["backup_id"]
    files = seed.files_fingerprint(real_stack.files_dir)

    with open_repository(stack_b) as repo:
        assert {r["id"]: r["status"] for r in catalog(repo)} == {first: "complete", second: "complete"}
        assert repo.key_id_of(f"{first}/manifest.json") == key_id("A")
        assert repo.key_id_of(f"{second}/manifest.json") == key_id("B")
        assert read_manifest(repo, first).files.count == read_manifest(repo, second).files.count
    for bid in (first, second):
        assert verify_backup(stack=str(path_b), backup_id=bid)["ok"]
        shutil.rmtree(real_stack.files_dir)
        assert not any(real_stack.files_dir.iterdir())  # the property made it again, empty
        restore(stack=str(path_b), backup_id=bid, components=["files"], confirm=True)
        assert seed.files_fingerprint(real_stack.files_dir) == files

    path_b_only, _ = make_stack(with_key(settings, "B"))  # A dropped too early: its backup is named
    with pytest.raises((KeyUnavailable, VerificationFailed), match=key_id("A")):
        verify_backup(stack=str(path_b_only), backup_id=first)


def backup_and_scan_needles(real_stack, cluster3, seeded3, path) -> tuple[str, dict[str, bytes]]:
    needle = needles(real_stack, cluster3, seeded3)
    # compression none: without encryption, row keys and attachment bytes would lie in the objects as is
    bid = hot_backup(stack=str(path), compression="none")["backup_id"]
    return bid, needle


def assert_no_plaintext(stack, needle: dict[str, bytes]) -> None:
    stored = stored_objects(stack)
    assert any(k.endswith("manifest.json") for k in stored) and len(stored) > 20
    leaks = {name: key for key, data in stored.items() for name, n in needle.items() if n in data}
    assert leaks == {}
    assert all(data.startswith(b"THBENC") for key, data in stored.items() if not key.startswith("locks/"))
    # the control: decrypted, the same objects do hold the rows and the attachments
    clear = plaintexts(stack)
    missing = [name for name, n in needle.items() if not name.startswith("es ") and n not in clear]
    assert missing == []


@pytest.mark.parametrize("kind", ["local", "sftp", "s3"])
def test_backup_verify_restore_leave_no_plaintext_in_the_repository(real_stack, cluster3, seeded3,
                                                                    make_stack, kind):
    """Every kind: backup, verify (every object decrypted and hashed), a restore drill on SFTP and
    S3 (local has its own below, with a full restore), attachments restored from it, and a scan
    of every stored byte."""
    path, stack = make_stack(encrypted(real_stack, kind, f"enc-{kind}"))
    files = seed.files_fingerprint(real_stack.files_dir)
    bid, needle = backup_and_scan_needles(real_stack, cluster3, seeded3, path)
    assert verify_backup(stack=str(path), backup_id=bid)["ok"]
    if kind != "local":
        drill = restore_drill(stack=str(path), backup_id=bid)
        assert drill["identical"] and drill["not_compared"] == [] and drill["rows"] > 0
    (real_stack.files_dir / next(iter(seeded3["files"]))).unlink()
    restore(stack=str(path), backup_id=bid, components=["files"], confirm=True)
    assert seed.files_fingerprint(real_stack.files_dir) == files
    assert_no_plaintext(stack, needle)


def test_drill_and_full_restore_of_an_encrypted_backup(real_stack, cluster3, seeded3, make_stack):
    """The whole way back through the encrypting layer: rows, a document and an attachment lost
    and restored (the SFTP and S3 cases above also drill)."""
    path, stack = make_stack(encrypted(real_stack, "local", "enc-full"))
    before = {"rows": seed.cluster_fingerprint(cluster3),
              "index": seed.index_fingerprint(real_stack.elasticsearch.client()),
              "files": seed.files_fingerprint(real_stack.files_dir)}
    bid, needle = backup_and_scan_needles(real_stack, cluster3, seeded3, path)
    damage_live_data(real_stack, cluster3, seeded3)
    report = restore(stack=str(path), backup_id=bid, confirm=True)
    assert seed.cluster_fingerprint(cluster3) == before["rows"]
    assert seed.index_fingerprint(real_stack.elasticsearch.client()) == before["index"]
    assert seed.files_fingerprint(real_stack.files_dir) == before["files"]
    assert report["thehive"] == "healthy"
    assert_no_plaintext(stack, needle)
