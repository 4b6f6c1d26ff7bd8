"""Listing a snapshot folder component by component (incremental mode), on a local folder."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time

import pytest

from tasks.archive import compress, decompress
from tasks.content_store import Component, ContentMismatch, Known, RunStore
from tasks.hosts import LocalHost
from tasks.repositories.local import LocalRepository
from tasks.retry import is_transient
from tasks.table_parts import (
    SHA256_FILES,
    SnapshotChanged,
    SnapshotListingError,
    _hashed_path,
    hash_files,
    list_components,
    table_entry,
)
from tasks.transfer import store


class HashFirstRepository(LocalRepository):
    """A local repository that needs an object's key before its bytes, as S3 and an encrypted
    one do: new files are hashed on the node before they are sent."""

    names_after = False


class ChangingHost(LocalHost):
    """A folder whose newest file goes between the walk and its hashing or reading (and another
    comes), ``changes`` times: a clear racing with us."""

    def __init__(self, folder, changes: int):
        super().__init__("n1")
        self.folder, self.changes, self.n = folder, changes, 0
        (folder / "late-0").write_bytes(b"late")

    def run(self, argv, **kwargs):
        if SHA256_FILES in argv:
            self._change()
        return super().run(argv, **kwargs)

    def stream_from(self, argv, **kwargs):
        if "cat" in argv:
            self._change()
        return super().stream_from(argv, **kwargs)

    def _change(self):
        if self.changes:
            self.changes -= 1
            (self.folder / f"late-{self.n}").unlink()
            self.n += 1
            (self.folder / f"late-{self.n}").write_bytes(b"late")


def snapshot(tmp_path):
    folder = tmp_path / "snapshots" / "thb-x"
    (folder / ".idx").mkdir(parents=True)
    (folder / "nb-1-big-Data.db").write_bytes(b"data" * 100)
    (folder / ".idx" / "nb-1-big-Index.db").write_bytes(b"index")
    return folder


def test_every_file_with_its_size_then_its_sha256(tmp_path):
    folder = snapshot(tmp_path)
    listed = list_components(LocalHost("n1"), str(folder))
    assert {p: (f.size, f.name) for p, f in listed.items()} == {
        ".idx/nb-1-big-Index.db": (5, ""), "nb-1-big-Data.db": (400, "")}  # hashed as they are sent
    assert hash_files(LocalHost("n1"), str(folder), sorted(listed)) == {
        ".idx/nb-1-big-Index.db": hashlib.sha256(b"index").hexdigest(),
        "nb-1-big-Data.db": hashlib.sha256(b"data" * 100).hexdigest()}
    data = (folder / "nb-1-big-Data.db").stat()
    assert listed["nb-1-big-Data.db"].ident.startswith(f"{data.st_ino}:{int(data.st_mtime)}")


@pytest.mark.parametrize("tools", [("openssl", "sha256sum"), ("sha256sum",)])
def test_the_node_hashes_with_openssl_else_sha256sum_and_both_lines_parse(tmp_path, tools):
    """A node without OpenSSL still hashes (coreutils); each tool's line gives the same path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", *tools):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    folder = snapshot(tmp_path)
    data = str(folder / "nb-1-big-Data.db")
    out = subprocess.run([str(bin_dir / "sh"), "-c", SHA256_FILES, "sha256", data], env={"PATH": str(bin_dir)},
                         capture_output=True, text=True, check=True).stdout
    line = out.rstrip("\n")
    assert line[:64] == hashlib.sha256(b"data" * 100).hexdigest()
    assert _hashed_path(LocalHost("n1"), str(folder), line) == data
    assert (line[65] == "*") == ("openssl" in tools)  # which tool ran


def test_a_name_sha256sum_printed_escaped_is_refused():
    with pytest.raises(SnapshotListingError, match="unexpected hash line"):
        _hashed_path(LocalHost("n1"), "/r", "\\" + "a" * 64 + "  /r/new\\nline")


@pytest.mark.parametrize("kind", [LocalRepository, HashFirstRepository])
def test_a_file_gone_before_it_is_read_fails_the_table_as_transient_and_the_retry_lists_again(tmp_path, kind):
    folder = snapshot(tmp_path)
    host, repo = ChangingHost(folder, changes=1), kind(tmp_path / "repo")
    with pytest.raises(SnapshotChanged, match="late-0 under .* went between") as failed:
        entry(host, repo, RunStore({}), folder)
    assert is_transient(failed.value)  # the task's retry
    again = entry(host, repo, RunStore({}), folder)
    assert {p.path for p in again.parts} == {".idx/nb-1-big-Index.db", "nb-1-big-Data.db", "late-1"}


class CountingHost(LocalHost):
    """Counts the ``cat`` and hashing commands (each one an SSH exec on a real node), in order."""

    def __init__(self):
        super().__init__("n1")
        self.cats: list[list[str]] = []
        self.hashed: list[str] = []
        self.batches: list[list[str]] = []

    def stream_from(self, argv, **kwargs):
        if "cat" in argv:
            self.cats.append(list(argv))
        return super().stream_from(argv, **kwargs)

    def run(self, argv, **kwargs):
        if SHA256_FILES in argv:
            self.batches.append([os.path.basename(a) for a in argv if a.startswith("/")])
            self.hashed += [a for a in argv if a.startswith("/")]
        return super().run(argv, **kwargs)


def entry(host, repo, run, folder, backup_id="b1"):
    return table_entry(host, repo, run, backup_id=backup_id, node="n1", keyspace="thehive", table="t",
                       table_dir="t-1", root=str(folder), compression="zstd")


def stored_bytes(repo, part) -> bytes:
    with repo.get(part.key) as chunks:
        return b"".join(decompress(chunks, "zstd"))


@pytest.mark.parametrize("kind", [LocalRepository, HashFirstRepository])
def test_new_components_are_read_by_one_cat_and_each_stored_once(tmp_path, kind):
    folder = snapshot(tmp_path)
    (folder / "nb-1-big-TOC.txt").write_bytes(b"Data.db\nTOC.txt\n")
    (folder / "nb-2-big-TOC.txt").write_bytes(b"Data.db\nTOC.txt\n")  # same content, another name
    (folder / "nb-2-big-Data.db").write_bytes(os.urandom(3 * 1024 * 1024 + 7))  # chunks split it
    repo, host = kind(tmp_path / "repo"), CountingHost()
    first = entry(host, repo, RunStore({}), folder)
    assert len(host.cats) == 1  # every new file, back to back (a TOC's twin: stored once)
    assert (host.hashed == []) == repo.names_after  # named after their bytes: none hashed first
    assert sorted(p.path for p in first.parts) == sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                                                         if p.is_file())
    for part in first.parts:
        assert stored_bytes(repo, part) == (folder / part.path).read_bytes()
    toc1, toc2 = (next(p for p in first.parts if p.path == f"nb-{n}-big-TOC.txt") for n in (1, 2))
    assert toc1.key == toc2.key and [toc1.added, toc2.added].count(True) == 1

    host.cats.clear()
    known = {p.key: Known(p.stored_size, p.stored_sha256) for p in first.parts}
    named = {("n1", "t-1", p.path, p.size, p.ident): p.name for p in first.parts}
    again = entry(host, repo, RunStore(known, named), folder, "b2")
    assert host.cats == [] and not any(p.added for p in again.parts)  # nothing new: nothing read
    if repo.names_after:  # no identity known: read again, and dropped as stored already
        again = entry(host, repo, RunStore(known), folder, "b3")
        assert len(host.cats) == 1 and not any(p.added for p in again.parts)
    assert not list((tmp_path / "repo").rglob(".tmp-*"))  # a dropped write leaves no temporary


def test_files_are_read_in_groups_of_bounded_bytes_and_count(monkeypatch):
    from tasks import content_store
    monkeypatch.setattr(content_store, "GROUP_BYTES", 100)
    monkeypatch.setattr(content_store, "FILES_PER_READ", 3)
    files = [(i, Component(f"f{i}", size, "0" * 64)) for i, size in enumerate([40, 50, 20, 500, 1, 1, 1, 1])]
    groups = content_store.read_groups(files)
    assert [[c.path for _, c in g] for g in groups] == [["f0", "f1"], ["f2"], ["f3"], ["f4", "f5", "f6"], ["f7"]]


def test_a_big_table_goes_over_two_streams_each_with_its_own_repository(tmp_path, monkeypatch):
    """Groups shared out by two streams: every file stored once with its own bytes, in order."""
    from tasks import content_store
    monkeypatch.setattr(content_store, "GROUP_BYTES", 1 << 20)
    folder = snapshot(tmp_path)
    for n in range(2, 8):
        (folder / f"nb-{n}-big-Data.db").write_bytes(os.urandom((1 << 20) - n))
    repo, host = LocalRepository(tmp_path / "repo"), CountingHost()
    opened: list[int] = []

    def open_repo():
        opened.append(threading.get_ident())
        return LocalRepository(tmp_path / "repo")

    first = table_entry(host, repo, RunStore({}), backup_id="b1", node="n1", keyspace="thehive", table="t",
                        table_dir="t-1", root=str(folder), compression="zstd", streams=2,
                        open_repo=open_repo)
    assert len(host.cats) >= 6 and len(opened) == 2 and len(set(opened)) == 2
    assert [p.path for p in first.parts] == sorted(p.path for p in first.parts)  # the listing's order
    for part in first.parts:
        assert part.added and stored_bytes(repo, part) == (folder / part.path).read_bytes()


def test_the_first_group_is_hashed_alone_then_twice_as_many_per_command(tmp_path, monkeypatch):
    """Sending starts after one group's hashing; a table of many groups costs few commands."""
    from tasks import content_store
    monkeypatch.setattr(content_store, "GROUP_BYTES", 1 << 20)
    folder = snapshot(tmp_path)
    for n in range(2, 9):  # 7 groups of one file, the biggest first; the 2 small files: an 8th
        (folder / f"nb-{n}-big-Data.db").write_bytes(os.urandom((1 << 20) - n))
    host, repo = CountingHost(), HashFirstRepository(tmp_path / "repo")
    first = entry(host, repo, RunStore({}), folder)
    assert [len(b) for b in host.batches] == [1, 2, 4, 2] and host.batches[0] == ["nb-2-big-Data.db"]
    assert len(host.cats) == 8 and all(p.added for p in first.parts)
    for part in first.parts:
        assert stored_bytes(repo, part) == (folder / part.path).read_bytes()
    host.batches.clear()
    host.cats.clear()
    known = {p.key: Known(p.stored_size, p.stored_sha256) for p in first.parts}
    entry(host, repo, RunStore(known), folder, "b2")  # no identities known: hashed, nothing read
    assert [len(b) for b in host.batches] == [1, 2, 4, 2] and host.cats == []


def test_a_file_that_grew_after_listing_fails_the_table(tmp_path):
    folder = snapshot(tmp_path)

    class GrowingHost(LocalHost):
        def stream_from(self, argv, **kwargs):
            with open(folder / "nb-1-big-Data.db", "ab") as f:  # between the listing and the read
                f.write(b"more")
            return super().stream_from(argv, **kwargs)

    repo = LocalRepository(tmp_path / "repo")
    with pytest.raises(ContentMismatch):
        entry(GrowingHost("n1"), repo, RunStore({}), folder)
    stored = [o.key for o in repo.list()]
    assert not [k for k in stored if k.endswith(".parts.json")]  # the table's list never written
    for key in stored:  # what was stored holds the bytes its name says (the file's first 400)
        with repo.get(key) as chunks:
            assert hashlib.sha256(b"".join(decompress(chunks, "zstd"))).hexdigest() in key


def test_a_component_another_table_is_sending_is_recorded_once_it_is_stored(tmp_path):
    folder = snapshot(tmp_path)
    repo, run = LocalRepository(tmp_path / "repo"), RunStore({})
    index = Component(".idx/nb-1-big-Index.db", 5, hashlib.sha256(b"index").hexdigest())
    key = run._key(repo, index, "zstd")
    lock = run._key_lock(key)
    lock.acquire()  # another table's task is sending it: it stores it, then lets go

    def other_table():
        time.sleep(0.5)
        run.known[key] = Known(*_store_plain(repo, key, b"index"))
        lock.release()

    other = threading.Thread(target=other_table)
    other.start()
    host = CountingHost()
    result = entry(host, repo, run, folder)
    other.join()
    assert len(host.cats) == 1 and host.cats[0][-1].endswith("nb-1-big-Data.db")  # the held one not read
    assert {p.path: p.added for p in result.parts} == {".idx/nb-1-big-Index.db": False, "nb-1-big-Data.db": True}
    assert all(p.ident for p in result.parts)  # the held one too: the next backup knows it unhashed


def _store_plain(repo, key, data):
    stored = store(repo, key, compress([data], "zstd"))
    return stored.size, stored.sha256


@pytest.mark.parametrize("kind", [LocalRepository, HashFirstRepository])
def test_a_file_a_kept_backup_listed_is_not_read_nor_hashed_again_unless_it_changed(tmp_path, kind):
    folder = snapshot(tmp_path)
    repo, host = kind(tmp_path / "repo"), CountingHost()
    first = entry(host, repo, RunStore({}), folder)
    assert len(host.hashed) == (0 if repo.names_after else 2) and all(p.ident for p in first.parts)

    def second_run():
        host.hashed.clear()
        host.cats.clear()
        known = {p.key: Known(p.stored_size, p.stored_sha256) for p in first.parts}
        hashed = {("n1", "t-1", p.path, p.size, p.ident): p.name for p in first.parts}
        return entry(host, repo, RunStore(known, hashed), folder, "b2")

    again = second_run()
    assert host.hashed == [] and host.cats == [] and [p.model_dump() for p in again.parts] == [
        {**p.model_dump(), "added": False} for p in first.parts]
    # rewritten in place under the same size (another mtime), or replaced (another inode): hashed
    # first, or read and named by their bytes
    data = folder / "nb-1-big-Data.db"
    data.write_bytes(b"DATA" * 100)
    (folder / "new").write_bytes(b"index")
    (folder / "new").rename(folder / ".idx" / "nb-1-big-Index.db")
    again = second_run()
    changed = sorted([str(folder / ".idx" / "nb-1-big-Index.db"), str(data)])
    if repo.names_after:
        assert host.hashed == [] and sorted(a for cat in host.cats for a in cat if a.startswith("/")) == changed
    else:
        assert sorted(host.hashed) == changed
    assert {p.path: p.added for p in again.parts} == {".idx/nb-1-big-Index.db": False, "nb-1-big-Data.db": True}
    assert stored_bytes(repo, next(p for p in again.parts if p.path == "nb-1-big-Data.db")) == b"DATA" * 100


def test_with_encryption_a_file_a_kept_backup_listed_is_known_by_its_keyed_name_unread(tmp_path):
    """A keyed name does not give the SHA-256 back, and needs none to be found: the object is
    looked up by it. Only a file whose object is gone is hashed again, and sent."""
    from tasks.repositories.crypto import Keyring, MasterKey
    from tasks.repositories.encrypting import EncryptingRepository

    folder = snapshot(tmp_path)
    keyring = Keyring(MasterKey.from_bytes(os.urandom(32), "key"))
    repo = EncryptingRepository(LocalRepository(tmp_path / "repo"), keyring)
    host = CountingHost()
    first = entry(host, repo, RunStore({}), folder)
    assert len(host.hashed) == 2 and all(p.ident and p.added for p in first.parts)

    def second_run():
        host.hashed.clear()
        host.cats.clear()
        known = {p.key: Known(p.stored_size, p.stored_sha256) for p in first.parts}
        named = {("n1", "t-1", p.path, p.size, p.ident): p.name for p in first.parts}
        return entry(host, repo, RunStore(known, named), folder, "b2")

    again = second_run()
    assert host.hashed == [] and host.cats == []
    assert [p.model_dump() for p in again.parts] == [{**p.model_dump(), "added": False} for p in first.parts]
    gone = next(p for p in first.parts if p.path == "nb-1-big-Data.db")
    repo.delete(gone.key)
    again = second_run()
    assert host.hashed == [str(folder / "nb-1-big-Data.db")] and len(host.cats) == 1
    assert {p.path: p.added for p in again.parts} == {".idx/nb-1-big-Index.db": False, "nb-1-big-Data.db": True}
    assert stored_bytes(repo, next(p for p in again.parts if p.added)) == b"data" * 100
