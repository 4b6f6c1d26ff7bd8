"""Tar streams: round trips per compression, inventory, and refusal of unsafe members."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile

import pytest

from tasks.archive import EXTENSIONS, TarStats, UnsafeArchive, compression_of, pack, unpack, walk_tar


def tar_of(root) -> bytes:
    return subprocess.run(["tar", "--format=pax", "-C", str(root), "-cf", "-", "."],
                          capture_output=True, check=True).stdout


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "big").write_bytes(os.urandom(3 << 20))
    (tmp_path / "small").write_text("hello")
    (tmp_path / "small").chmod(0o640)
    return tmp_path


@pytest.mark.parametrize("kind", list(EXTENSIONS))
def test_round_trip_and_inventory(tree, kind):
    raw = tar_of(tree)
    stats = TarStats()
    packed = b"".join(pack((raw[i:i + 65536] for i in range(0, len(raw), 65536)), kind, stats,
                           inventory=True))
    assert stats.raw_size == len(raw) and stats.files == 2
    files = {e.path: e for e in stats.entries if e.sha256}
    assert files["small"].size == 5 and files["small"].mode == 0o640
    assert files["a/b/big"].size == 3 << 20
    back = TarStats()
    assert b"".join(unpack([packed], kind, back)) == raw
    assert compression_of("x" + EXTENSIONS[kind]) == kind


def malicious(member: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w") as t:
        ok = tarfile.TarInfo("ok")
        ok.size = 2
        t.addfile(ok, io.BytesIO(b"ok"))
        if member.isfile():
            member.size = len(data)
            t.addfile(member, io.BytesIO(data))
        else:
            t.addfile(member)
    return bio.getvalue()


def link(name, target, kind=tarfile.SYMTYPE):
    m = tarfile.TarInfo(name)
    m.type, m.linkname = kind, target
    return m


@pytest.mark.parametrize("member,reason", [
    (tarfile.TarInfo("../../etc/x"), "outside"),
    (tarfile.TarInfo("/etc/passwd"), "outside"),
    (tarfile.TarInfo("a/../../x"), "outside"),
    (link("sym", "/etc"), "link to '/etc'"),
    (link("a/sym", "../../etc"), "outside"),
    (link("hard", "/etc/passwd", tarfile.LNKTYPE), "hard link"),
    (link("dev", "", tarfile.CHRTYPE), "special"),
], ids=["dotdot", "absolute", "nested-dotdot", "symlink-absolute", "symlink-up", "hardlink", "device"])
def test_unsafe_member_refused_before_its_header_is_passed_on(member, reason):
    data = malicious(member)
    passed = []
    with pytest.raises(UnsafeArchive, match=reason):
        for chunk in unpack([data], "none", TarStats()):
            passed.append(chunk)
    # Only the first, safe member (header + one data block) went through.
    assert sum(map(len, passed)) == 1024


def test_links_inside_the_tree_are_kept():
    data = malicious(link("conf/current", "../conf.d/v2"))
    assert b"".join(unpack([data], "none", TarStats())) == data


def test_sizes_without_digests_pass_the_stream_through(tree):
    """Staging reads each file's size and skips the per-file hashing it never uses."""
    raw = tar_of(tree)
    stats = TarStats(digests=False)
    assert b"".join(walk_tar([raw], stats, check=True)) == raw
    assert stats.sizes == {"small": 5, "a/b/big": 3 << 20}
    assert stats.files == 2 and not stats.entries


@pytest.fixture
def long_names(tmp_path):
    deep = tmp_path / ("d" * 90) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / ("f" * 120)).write_bytes(os.urandom(70_001))
    (tmp_path / "empty").write_bytes(b"")
    os.symlink(str(deep.relative_to(tmp_path) / ("f" * 120)), tmp_path / "to-long")
    return tmp_path


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar-short"])
@pytest.mark.parametrize("chunk", [1, 511, 513, 65536])
def test_any_tar_cut_anywhere_passes_through_byte_for_byte(long_names, fmt, chunk):
    """GNU long-name records and pax headers parse as tarfile reads them, whatever the chunking."""
    if fmt == "ustar-short":
        raw = subprocess.run(["tar", "--format=ustar", "-C", str(long_names), "-cf", "-", "empty"],
                             capture_output=True, check=True).stdout
    else:
        raw = subprocess.run(["tar", f"--format={fmt}", "-C", str(long_names), "-cf", "-", "."],
                             capture_output=True, check=True).stdout
    stats = TarStats()
    assert b"".join(walk_tar((raw[i:i + chunk] for i in range(0, len(raw), chunk)), stats, check=True,
                             inventory=True)) == raw
    assert stats.raw_size == len(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        expected = {m.name.removeprefix("./"): (m.size, hashlib.sha256(tar.extractfile(m).read()).hexdigest())
                    for m in tar.getmembers() if m.isfile()}
    assert {e.path: (e.size, e.sha256) for e in stats.entries if e.sha256} == expected
    assert len(stats.entries) == len(tarfile.open(fileobj=io.BytesIO(raw)).getmembers())


def test_an_empty_archive_passes_and_a_damaged_or_cut_one_is_an_error(tree):
    empty = subprocess.run(["tar", "-cf", "-", "--files-from", "/dev/null"], capture_output=True,
                           check=True).stdout
    assert b"".join(walk_tar([empty], TarStats(), check=True)) == empty
    with pytest.raises(tarfile.ReadError, match="empty file"):
        b"".join(walk_tar([b""], TarStats()))
    raw = tar_of(tree)
    with pytest.raises(tarfile.ReadError, match="unexpected end"):
        b"".join(walk_tar([raw[:len(raw) // 2]], TarStats()))
    damaged = bytearray(raw)
    last_header = max(i for i in range(512, len(raw), 512) if raw[i + 257:i + 262] == b"ustar")
    damaged[last_header + 148] ^= 0x55  # a later member's header checksum
    with pytest.raises(tarfile.ReadError, match="invalid tar header"):
        b"".join(walk_tar([bytes(damaged)], TarStats()))
