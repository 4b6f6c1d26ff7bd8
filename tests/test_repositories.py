"""One conformance suite run against every repository kind, on real servers (sshd, S3 API)."""
from __future__ import annotations

import os

import pytest

from config import parse_stack
from tasks.repositories import ObjectNotFound, RepositoryError, open_repository

CONFORMANCE_KEY_ENV = "THB_TEST_CONFORMANCE_KEY"


@pytest.fixture(params=["local", "sftp", "s3", "local+encrypted", "sftp+encrypted", "s3+encrypted"])
def repo(request, real_stack, cluster3, monkeypatch):
    """Every kind, plain and through EncryptingRepository (docs/FORMAT.md, "Encryption")."""
    kind, _, encrypted = request.param.partition("+")
    settings = real_stack.repository(kind, f"conf-{kind}{'-enc' if encrypted else ''}")
    if encrypted:
        monkeypatch.setenv(CONFORMANCE_KEY_ENV, os.urandom(32).hex())
        settings["encryption"] = {"key": {"env": CONFORMANCE_KEY_ENV}}
    data = real_stack.stack_data(cluster3, settings, with_elasticsearch=False)
    with open_repository(parse_stack(data)) as r:
        yield r
        for obj in list(r.list()):
            r.delete(obj.key)


def test_put_get_stat_list_delete(repo):
    big = os.urandom(40 << 20)  # above the S3 multipart threshold
    parts = (big[i:i + (3 << 20)] for i in range(0, len(big), 3 << 20))
    assert repo.put("b1/cassandra/n1/ks/t-1.tar.zst", parts) == len(big)
    repo.put_bytes("b1/manifest.json", b"{}")
    repo.put_bytes("b2/x", b"")
    assert repo.get_bytes("b1/cassandra/n1/ks/t-1.tar.zst") == big
    assert repo.stat("b1/manifest.json").size == 2 and repo.stat("b2/x").size == 0
    assert repo.stat("nope") is None
    assert sorted(o.key for o in repo.list("b1/")) == ["b1/cassandra/n1/ks/t-1.tar.zst", "b1/manifest.json"]
    repo.delete("b1/manifest.json")
    repo.delete("b1/manifest.json")  # absent: not an error
    assert repo.stat("b1/manifest.json") is None
    with pytest.raises(ObjectNotFound):
        repo.get_bytes("b1/manifest.json")


def test_overwrite_is_atomic_and_failed_put_leaves_nothing(repo):
    repo.put_bytes("k/obj", b"first")

    def broken():
        yield b"x" * (1 << 20)
        raise RuntimeError("source died mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        repo.put("k/obj", broken())
    with pytest.raises(RuntimeError, match="mid-stream"):
        repo.put("k/new", broken())
    assert repo.get_bytes("k/obj") == b"first"
    assert [o.key for o in repo.list("k/")] == ["k/obj"]


def test_an_object_named_after_its_bytes_or_left_leaves_no_temporary(repo):
    """Local and SFTP name a write once it is in (a content name from its bytes); S3 and an
    encrypted store need the key first and say so."""
    if not repo.names_after:
        with pytest.raises(NotImplementedError):
            repo.put_unnamed("sstables/", [b"x"])
        return
    big = os.urandom(3 << 20)
    with repo.put_unnamed("sstables/", (big[i:i + (1 << 20)] for i in range(0, len(big), 1 << 20))) as unnamed:
        assert unnamed.written == len(big) and list(repo.list("sstables/")) == []  # not an object yet
        unnamed.name_as("sstables/ab/ab01.zst")
    with repo.put_unnamed("sstables/", [b"same content, stored already"]) as unnamed:
        pass  # left: removed
    with pytest.raises(RuntimeError, match="mid-stream"), repo.put_unnamed("sstables/", _broken()):
        pass
    assert [o.key for o in repo.list("sstables/")] == ["sstables/ab/ab01.zst"]
    assert repo.get_bytes("sstables/ab/ab01.zst") == big
    assert repo.clean_temporary(0) == []  # nothing left behind to clean


def _broken():
    yield b"x" * (1 << 20)
    raise RuntimeError("source died mid-stream")


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/../b", ".hidden", "a/.tmp-x", ""])
def test_keys_that_could_escape_are_refused(repo, key):
    with pytest.raises(RepositoryError, match="invalid object key"):
        repo.put_bytes(key, b"x")


def test_put_if_absent_creates_once_and_never_overwrites(repo):
    assert repo.put_if_absent("locks/lock.json", b"first") is True
    assert repo.put_if_absent("locks/lock.json", b"second") is False
    assert repo.get_bytes("locks/lock.json") == b"first"
    assert [o.key for o in repo.list("locks/")] == ["locks/lock.json"]  # no temp name left


def test_put_if_absent_of_racing_threads_has_one_winner(repo):
    import threading

    barrier, wins = threading.Barrier(12), []

    def take(i):
        barrier.wait()
        if repo_for_thread[i].put_if_absent("race/key", str(i).encode()):
            wins.append(i)

    repo_for_thread = [_fresh(repo) for _ in range(12)]
    threads = [threading.Thread(target=take, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in repo_for_thread:
        r.close()
    assert len(wins) == 1 and repo.get_bytes("race/key") == str(wins[0]).encode()


def _store(repo):
    """The store under the wrappers (encrypting, retrying)."""
    from tasks.repositories.encrypting import EncryptingRepository

    return (repo.inner if isinstance(repo, EncryptingRepository) else repo).inner


def _fresh(repo):
    """Another connection to the same repository (SFTP connections are not shared by threads)."""
    from tasks.repositories.encrypting import EncryptingRepository
    from tasks.repositories.factory import RetryingRepository
    from tasks.repositories.sftp import SftpRepository

    inner = _store(repo)
    if isinstance(inner, SftpRepository):
        fresh = RetryingRepository(SftpRepository(inner.host, inner.root, inner.ssh))
        return EncryptingRepository(fresh, repo.keyring) if isinstance(repo, EncryptingRepository) else fresh
    return repo


def test_clean_temporary_removes_only_old_leftovers(repo):
    """A write killed mid-stream leaves a temp file (local, SFTP) or a pending multipart upload
    (S3); objects are never touched."""
    from tasks.repositories.local import LocalRepository
    from tasks.repositories.s3 import S3Repository

    inner = _store(repo)
    repo.put_bytes("b9/obj", b"kept")
    if isinstance(inner, LocalRepository):
        (inner.root / "b9" / ".tmp-dead-obj2").write_bytes(b"partial")
    elif isinstance(inner, S3Repository):
        inner.client.create_multipart_upload(Bucket=inner.bucket, Key=inner.prefix + "b9/obj2")
    else:
        with inner.sftp.open(f"{inner.root}/b9/.tmp-dead", "wb") as f:
            f.write(b"partial")
    if not isinstance(inner, S3Repository):  # moto reports every upload as initiated in 2010
        assert repo.clean_temporary(3600) == []
    removed = repo.clean_temporary(0)
    assert len(removed) == 1 and removed[0].startswith("b9/")
    assert repo.clean_temporary(0) == []
    assert [o.key for o in repo.list("b9/")] == ["b9/obj"] and repo.get_bytes("b9/obj") == b"kept"


def test_stored_bytes_are_ciphertext_of_the_reported_size(repo):
    """Encrypted variants only: the store holds no plaintext, and sizes are the plaintext's."""
    from tasks.repositories.crypto import stored_size
    from tasks.repositories.encrypting import EncryptingRepository

    if not isinstance(repo, EncryptingRepository):
        pytest.skip("plain repository")
    data = b"case notes: ransomware beacon on host-17 " * 5000
    repo.put("b1/files/attachments.tar", iter([data]))
    stored = _store(repo).get_bytes("b1/files/attachments.tar")
    assert len(stored) == stored_size(len(data)) and b"ransomware" not in stored
    assert repo.stat("b1/files/attachments.tar").size == len(data)
    assert [o.size for o in repo.list("b1/")] == [len(data)] and repo.get_bytes("b1/files/attachments.tar") == data


@pytest.mark.parametrize("kind", ["local", "sftp"])
def test_objects_are_0600_in_0700_folders(real_stack, cluster3, kind):
    """Incident data: only the repository's owner may read it, whatever the umask of the server."""
    settings = real_stack.repository(kind, f"modes-{kind}")
    data = real_stack.stack_data(cluster3, settings, with_elasticsearch=False)
    old = os.umask(0o022)  # the usual umask: without our modes, files would be 0644
    try:
        with open_repository(parse_stack(data)) as r:
            r.put("b1/cassandra/n1/ks/t.tar.zst", iter([b"x" * 10]))
            assert r.put_if_absent("locks/lock.json", b"{}")
    finally:
        os.umask(old)
    root = settings["path"]
    modes = {os.path.relpath(root, root): os.stat(root).st_mode & 0o777}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            modes[os.path.relpath(full, root)] = os.stat(full).st_mode & 0o777
    assert modes == {".": 0o700, "b1": 0o700, "b1/cassandra": 0o700, "b1/cassandra/n1": 0o700,
                     "b1/cassandra/n1/ks": 0o700, "b1/cassandra/n1/ks/t.tar.zst": 0o600,
                     "locks": 0o700, "locks/lock.json": 0o600}


def test_s3_objects_are_written_with_the_stack_files_server_side_encryption(real_stack, cluster3):
    settings = {**real_stack.repository("s3", "modes-sse"), "server_side_encryption": "AES256"}
    data = real_stack.stack_data(cluster3, settings, with_elasticsearch=False)
    with open_repository(parse_stack(data)) as r:
        r.put("b1/cassandra/n1/ks/t.tar.zst", iter([os.urandom(20 << 20)]))  # multipart
        assert r.put_if_absent("locks/lock.json", b"{}")
    s3 = real_stack.s3.client()
    heads = {k: s3.head_object(Bucket=settings["bucket"], Key=k)
             for k in ("b1/cassandra/n1/ks/t.tar.zst", "locks/lock.json")}
    assert {k: h.get("ServerSideEncryption") for k, h in heads.items()} == dict.fromkeys(heads, "AES256")
