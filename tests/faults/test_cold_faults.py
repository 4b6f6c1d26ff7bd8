"""Cold restore under faults, on the real stack (3-node Cassandra, Elasticsearch, TheHive stand-in).

- An archive with an unsafe member and a matching checksum is refused before anything is moved.
- An extraction that fails half-way (the target's filesystem is too small) and an extraction the
  re-hash catches (a file differs from the archive's inventory) are rolled back: every folder is
  back as it was, hashed file by file at the moment the stack is started again (a ``before_start``
  hook records them), and the stack is up with the same rows, documents and files.

They share the session's cold backup (tests/conftest.py ``backed_up``) and damage copies of it in
new local repositories, as tests/test_restore.py does for the hot restore.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
import zstandard

from flows import lifecycle
from flows.cold_restore import ColdRestoreFailed, RestoreRefused, cold_restore
from tasks import restore_folders as folders
from tasks.archive import decompress
from tasks.folders import declared_paths
from tasks.manifest import read_manifest, write_manifest
from tasks.repositories import open_repository
from tests.stack import treehash
from tests.stack.cold import cold_stack, ensure_running, fingerprints, unhealthy

# A stop/start cycle of the 3-node stack takes minutes on a loaded machine, and the first test
# also pays for the session's stack and cold backup.
pytestmark = [pytest.mark.usefixtures("prefect_server", "seeded3"), pytest.mark.timeout(2400)]
TREEHASH = Path(treehash.__file__)


def damaged_copy(real_stack, cluster3, backed_up, tmp_path, damage, hooks=None):
    """A copy of the session's cold backup in a new local repository, ``damage(repo, manifest,
    root)`` applied; the manifest rewritten so that every size and SHA-256 matches again."""
    backup_id = backed_up.result["backup_id"]
    dst = real_stack.root / "repos" / f"cold-damaged-{uuid.uuid4().hex[:8]}"
    shutil.copytree(Path(backed_up.stack.repository.path) / backup_id, dst / backup_id)
    path, stack = cold_stack(real_stack, cluster3, tmp_path, repository={"kind": "local", "path": str(dst)},
                             hooks=hooks)
    with open_repository(stack) as repo:
        manifest = read_manifest(repo, backup_id)
        changed = damage(repo, manifest)
        for entry in manifest.objects:
            if entry.key in changed:
                blob = repo.get_bytes(entry.key)
                entry.size, entry.sha256 = len(blob), hashlib.sha256(blob).hexdigest()
        write_manifest(repo, manifest)
    return path, stack


def cold_paths(stack) -> list[str]:
    return [s.path for s in declared_paths(stack)[0]]


def leftovers(stack, backup_id) -> list[str]:
    """Moved-aside folders and journals of this restore still on disk (every node is local)."""
    return [p for path in cold_paths(stack)
            for p in (folders.aside_path(path, backup_id), folders.journal_path(path, backup_id))
            if Path(p).exists()]


def put_back_whatever_is_left(stack, backup_id) -> None:
    """Safety net for a failed test: the session's other modules need their folders."""
    for spec in declared_paths(stack)[0]:
        journal = folders.read_journal(stack, spec.node, spec.path, backup_id)
        if journal is not None:
            folders.put_back(stack, journal)


def test_unsafe_member_is_refused_before_anything_is_moved(real_stack, cluster3, backed_up, tmp_path):
    backup_id = backed_up.result["backup_id"]
    evil = f"../evil-{uuid.uuid4().hex[:8]}"
    key = f"{backup_id}/cold/hive/thehive/attachments.tar.zst"

    def add_unsafe_member(repo, manifest):
        """The real attachments archive, rebuilt with Python's tarfile plus one member at the end."""
        raw = b"".join(decompress([repo.get_bytes(key)], "zstd"))
        out = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(raw)) as src, \
                tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for m in src:
                tar.addfile(m, src.extractfile(m) if m.isfile() else None)
            m = tarfile.TarInfo(evil)
            m.size = 4
            tar.addfile(m, io.BytesIO(b"evil"))
        repo.put_bytes(key, zstandard.ZstdCompressor().compress(out.getvalue()))
        return {key}

    path, stack = damaged_copy(real_stack, cluster3, backed_up, tmp_path, add_unsafe_member)
    rows = fingerprints(real_stack, cluster3)
    lifecycle.stop_in_order(stack, [], plain=True)
    try:
        before = treehash.trees(cold_paths(stack))
        with pytest.raises(RestoreRefused) as refused:
            cold_restore(stack=str(path), backup_id=backup_id, wipe=True)
        assert any(key in p and "unsafe archive" in p and evil in p for p in refused.value.problems), \
            refused.value.problems
        assert treehash.trees(cold_paths(stack)) == before  # every folder, file by file
        assert leftovers(stack, backup_id) == []  # nothing moved aside, no journal
        assert not (real_stack.files_dir / evil).exists()
    finally:
        put_back_whatever_is_left(stack, backup_id)
        lifecycle.start_all(stack)
        ensure_running(stack)
    assert unhealthy(stack) == {}
    assert fingerprints(real_stack, cluster3) == rows


def change_one_inventory(backup_id):
    key = f"{backup_id}/cold/hive/elasticsearch/data.inventory.json"

    def damage(repo, manifest):
        """A file of the Elasticsearch folder is said to hold other bytes than it does."""
        body = json.loads(repo.get_bytes(key))
        next(e for e in body["files"] if e["sha256"])["sha256"] = "0" * 64
        repo.put_bytes(key, json.dumps(body).encode())
        return {key}

    return damage


@pytest.mark.long  # make test-long
@pytest.mark.parametrize("fault", ["target-filesystem-full", "rehash-differs"])
def test_failure_half_way_rolls_back_folders_and_starts_the_stack_as_it_was(
        real_stack, cluster3, backed_up, tmp_path, fault):
    backup_id = backed_up.result["backup_id"]
    recorded = tmp_path / "at-start.json"
    _, probe = cold_stack(real_stack, cluster3, tmp_path)
    watched = cold_paths(probe)
    watched += [p for path in cold_paths(probe)
                for p in (folders.aside_path(path, backup_id), folders.journal_path(path, backup_id))]
    hooks = {"before_start": [{"node": "hive", "argv": [sys.executable, str(TREEHASH), str(recorded),
                                                         *watched]}]}
    if fault == "rehash-differs":
        damage = change_one_inventory(backup_id)
        expected = "extracted files differ from the inventory"
    else:
        damage, expected = (lambda repo, manifest: set()), "No space left on device"
    path, stack = damaged_copy(real_stack, cluster3, backed_up, tmp_path, damage, hooks=hooks)

    rows = fingerprints(real_stack, cluster3)
    files = real_stack.files_dir
    mounted = False
    lifecycle.stop_in_order(stack, [], plain=True)
    try:
        if fault == "target-filesystem-full":
            # The attachments folder is a mount point too small for the backup's attachments, and
            # holds two files of its own (so it is moved aside, file by file, and must come back).
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k,mode=0750", "tmpfs", str(files)],
                           check=True)
            mounted = True
            for name in sorted(backed_up.before["files"])[:2]:
                (files / name).parent.mkdir(parents=True, exist_ok=True)
                (files / name).write_bytes(b"kept " + name.encode())
        before = treehash.trees(watched)
        with pytest.raises(ColdRestoreFailed) as failed:
            cold_restore(stack=str(path), backup_id=backup_id, wipe=True)
        message = str(failed.value)
        assert expected in message, message
        assert "rolled back: folders as before, stack started" in message, message
        assert json.loads(recorded.read_text()) == json.loads(json.dumps(before))
        assert leftovers(stack, backup_id) == []
        assert unhealthy(stack) == {}
        now = fingerprints(real_stack, cluster3)
        assert (now["rows"], now["docs"]) == (rows["rows"], rows["docs"])
        if mounted:
            assert now["files"] == {n: hashlib.sha256(b"kept " + n.encode()).hexdigest()
                                    for n in sorted(backed_up.before["files"])[:2]}
        else:
            assert now["files"] == rows["files"]
    finally:
        put_back_whatever_is_left(stack, backup_id)
        if mounted:
            subprocess.run(["umount", str(files)], check=True)
        ensure_running(stack)
    assert fingerprints(real_stack, cluster3) == rows
