"""One conformance suite run against every repository kind, on real servers (sshd, S3 API)."""
from __future__ import annotations

import os

import pytest

from config import parse_stack
from tasks.repositories import ObjectNotFound, RepositoryError, open_repository


@pytest.fixture(params=["local", "sftp", "s3"])
def repo(request, real_stack, cluster3):
    data = real_stack.stack_data(cluster3, real_stack.repository(request.param, f"conf-{request.param}"),
                                 with_elasticsearch=False)
    with open_repository(parse_stack(data)) as r:
        yield r
        for obj in list(r.list()):
            r.delete(obj.key)


def test_put_get_stat_list_delete(repo):
    big = os.urandom(40 << 20)  # above the S3 multipart threshold
    assert repo.put("b1/cassandra/n1/ks/t-1.tar.zst", (big[i:i + (3 << 20)] for i in range(0, len(big), 3 << 20))) == len(big)
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


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/../b", ".hidden", "a/.tmp-x", ""])
def test_keys_that_could_escape_are_refused(repo, key):
    with pytest.raises(RepositoryError, match="invalid object key"):
        repo.put_bytes(key, b"x")
