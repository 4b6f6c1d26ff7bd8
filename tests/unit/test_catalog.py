"""The catalog on a real local repository: strangers (foreign folders, odd names in an old
backup) are reported and skipped, never deleted and never fatal."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from flows.prune import plan_prune
from tasks.catalog import delete_backup_objects, latest_complete, resolve_backup_id, scan
from tasks.repositories.crypto import Keyring, KeyUnavailable, MasterKey
from tasks.repositories.encrypting import EncryptingRepository
from tasks.repositories.local import LocalRepository

DATA = Path(__file__).parent / "data"
HOT = "hot-20261128-042323-ea0b"  # the id inside data/manifest-hot-c65ba4c.json
OLD = "hot-20200101-000000-0001"


def repository(tmp_path) -> LocalRepository:
    repo = LocalRepository(tmp_path / "repo")
    repo.put_bytes(f"{HOT}/manifest.json", (DATA / "manifest-hot-c65ba4c.json").read_bytes())
    repo.put_bytes(f"{HOT}/cassandra/n1/thehive/edgestore-1.tar.zst", b"x" * 10)
    repo.put_bytes(f"{OLD}/cassandra/n1/thehive/edgestore-1.tar.zst", b"y" * 20)
    repo.put_bytes("locks/lock.json", b"{}")
    # strangers: written by hand, by another tool, by a copy
    (tmp_path / "repo" / "README.txt").write_text("what this folder is")
    (tmp_path / "repo" / "other-tool").mkdir()
    (tmp_path / "repo" / "other-tool" / "data.bin").write_bytes(b"z")
    (tmp_path / "repo" / OLD / "notes from the on-call.txt").write_text("odd name")
    (tmp_path / "repo" / OLD / "cassandra" / "extra.log").write_text("a name we never write")
    return repo


def test_strangers_are_listed_apart_and_backups_keep_their_status(tmp_path):
    found = scan(repository(tmp_path))
    assert [(r["id"], r["status"]) for r in found.rows] == [(HOT, "complete"), (OLD, "incomplete")]
    assert sorted(found.foreign) == ["README.txt", "other-tool/data.bin"]
    assert sorted(found.junk[OLD]) == [f"{OLD}/cassandra/extra.log", f"{OLD}/notes from the on-call.txt"]
    assert next(r for r in found.rows if r["id"] == OLD)["size_mib"] == round(20 / 2**20, 2)
    notes = found.notes()
    assert notes[0].startswith("2 object(s) outside this tool's backup folders, skipped: ")
    assert notes[1].startswith(f"{OLD}: 2 object(s) with names this tool never writes, skipped")


def test_deleting_a_backup_leaves_strangers_in_place_and_does_not_fail(tmp_path):
    repo = repository(tmp_path)
    deleted, left = delete_backup_objects(repo, OLD, complete=False)
    assert deleted == 1
    assert sorted(left) == [f"{OLD}/cassandra/extra.log", f"{OLD}/notes from the on-call.txt"]
    assert (tmp_path / "repo" / OLD / "notes from the on-call.txt").read_text() == "odd name"
    assert [r["id"] for r in scan(repo).rows] == [HOT]  # only strangers are left of OLD


def test_latest_means_the_newest_complete_backup(tmp_path):
    repo = repository(tmp_path)
    assert latest_complete(repo) == resolve_backup_id(repo, "latest") == resolve_backup_id(repo, "") == HOT
    assert resolve_backup_id(repo, OLD) == OLD



def test_a_backup_under_a_key_not_given_is_unreadable_and_latest_refuses_it(tmp_path):
    """Encrypted repository (docs/FORMAT.md, "Encryption"): the listing never fails, prune never
    sees the backup as complete or incomplete, and 'latest' never quietly means an older one."""
    a, b = MasterKey.from_bytes(b"a" * 32, "key"), MasterKey.from_bytes(b"b" * 32, "key")
    manifest = (DATA / "manifest-hot-c65ba4c.json").read_bytes()
    store = LocalRepository(tmp_path / "repo")
    EncryptingRepository(store, Keyring(a)).put_bytes(f"{HOT}/manifest.json", manifest)
    EncryptingRepository(store, Keyring(b)).put_bytes(f"{OLD}/manifest.json", manifest.replace(HOT.encode(),
                                                                                               OLD.encode()))
    found = scan(EncryptingRepository(store, Keyring(b)))
    statuses = {r["id"]: r["status"] for r in found.rows}
    assert statuses[OLD] == "complete" and statuses[HOT].startswith("unreadable: ") and a.key_id in statuses[HOT]
    assert plan_prune(found.rows, datetime.now(UTC), 1, None, 0) == []
    with pytest.raises(KeyUnavailable, match=a.key_id):
        latest_complete(EncryptingRepository(store, Keyring(b)))
    rotated = EncryptingRepository(store, Keyring(b, (MasterKey.from_bytes(b"a" * 32, "old_keys[0]"),)))
    assert latest_complete(rotated) == HOT
