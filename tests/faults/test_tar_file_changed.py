"""GNU tar's "file changed as we read it" on a snapshot file: the table's stream is sent again.

Real GNU tar over a real folder; the fault is real too: a wrapper around tar re-links the big
file in a loop while the first tar reads it (a hard link changes the file's ctime, as a compaction
or another snapshot's clearing does to a snapshot's file), and tar exits 1 with that warning.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from tasks.archive import decompress
from tasks.hosts import CommandFailed, LocalHost
from tasks.repositories.local import LocalRepository
from tasks.table_archive import stream_table

#: First call: re-link ``$RELINK`` in a loop while tar runs; later calls: plain tar.
WRAPPER = r'''#!/bin/sh
n=$(cat "$COUNT" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$COUNT"
if [ "$n" -le "$CHANGE_TIMES" ]; then
  ( while [ ! -e "$STOP" ]; do ln -f "$RELINK" "$LINKDIR/other" 2>/dev/null; rm -f "$LINKDIR/other"; done ) &
  loop=$!
  tar "$@"; rc=$?
  touch "$STOP"; wait "$loop"; rm -f "$STOP"
  exit $rc
fi
exec tar "$@"
'''


@pytest.fixture
def snapshot(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    folder = tmp_path / "snapshots" / "hot-1"
    folder.mkdir(parents=True)
    (folder / "nb-1-big-Data.db").write_bytes(os.urandom(1 << 20) * 96)  # 96 MiB, read for a while
    (folder / "nb-1-big-Digest.crc32").write_text("123456789")
    (folder / "manifest.json").write_text('{"files": ["nb-1-big-Data.db"]}')
    wrapper = tmp_path / "tar-wrapper"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "links").mkdir()
    monkeypatch.setenv("COUNT", str(tmp_path / "count"))
    monkeypatch.setenv("STOP", str(tmp_path / "stop"))
    monkeypatch.setenv("RELINK", str(folder / "nb-1-big-Data.db"))
    monkeypatch.setenv("LINKDIR", str(tmp_path / "links"))
    return folder, wrapper


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_file_changed_is_streamed_again_and_the_archive_is_whole(snapshot, tmp_path, monkeypatch, caplog):
    folder, wrapper = snapshot
    monkeypatch.setenv("CHANGE_TIMES", "1")
    repo = LocalRepository(str(tmp_path / "repo"))
    streamed = stream_table(LocalHost("n1"), repo, "t/edgestore-1.tar.zst", str(folder), "zstd",
                            tar=[str(wrapper)])
    assert (tmp_path / "count").read_text().strip() == "2"  # the first tar failed, the second not
    assert streamed.attempts == 2 and "changed as we read it" in caplog.text
    data = b"".join(decompress([repo.get_bytes("t/edgestore-1.tar.zst")], "zstd"))
    out = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(out, filter="data")
    assert hashes(out) == hashes(folder)
    assert hashlib.sha256(repo.get_bytes("t/edgestore-1.tar.zst")).hexdigest() == streamed.stored.sha256
    assert streamed.sstables == 1 and streamed.stats.kept == {"nb-1-big-Digest.crc32": b"123456789"}
    assert not [p for p in (tmp_path / "repo").rglob("*") if p.name.startswith(".tmp")]


def test_file_changed_every_time_fails_after_three_streams(snapshot, tmp_path, monkeypatch):
    folder, wrapper = snapshot
    monkeypatch.setenv("CHANGE_TIMES", "99")
    repo = LocalRepository(str(tmp_path / "repo"))
    with pytest.raises(CommandFailed, match="file changed as we read it"):
        stream_table(LocalHost("n1"), repo, "t/edgestore-1.tar.zst", str(folder), "zstd",
                     tar=[str(wrapper)])
    assert (tmp_path / "count").read_text().strip() == "3"
    assert repo.stat("t/edgestore-1.tar.zst") is None


def test_other_tar_errors_are_never_success(snapshot, tmp_path, monkeypatch):
    folder, wrapper = snapshot
    monkeypatch.setenv("CHANGE_TIMES", "0")
    (folder / "unreadable").write_text("secret")
    (folder / "unreadable").chmod(0)
    repo = LocalRepository(str(tmp_path / "repo"))
    try:
        if os.geteuid() == 0:  # root reads anything: a vanished folder instead
            target = str(folder / "missing")
        else:
            target = str(folder)
        with pytest.raises(CommandFailed) as failed:
            stream_table(LocalHost("n1"), repo, "t/x.tar", target, "none", tar=[str(wrapper)])
    finally:
        (folder / "unreadable").chmod(0o600)
    assert failed.value.exit_code == 2
    assert (tmp_path / "count").read_text().strip() == "1"  # not sent again
    assert repo.stat("t/x.tar") is None
