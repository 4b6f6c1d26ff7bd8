"""The restore's steps in few commands: what the way back removes, staging's probe and check."""
from __future__ import annotations

import hashlib
import json
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.restore import by_node_biggest_first
from tasks.hosts import LocalHost
from tasks.manifest import ObjectEntry
from tasks.rollback import DISCARD, WRITE_JOURNAL
from tasks.staging import StagedArchive, StagingError, parse_probe, stage


def test_discard_removes_the_snapshot_its_copy_and_emptied_folders_then_the_journal(tmp_path):
    ks = tmp_path / "data" / "thehive"
    for table in ("edgestore-1a", "graphindex-2b"):
        (ks / table / "snapshots" / "rb-x").mkdir(parents=True)
        (ks / table / "snapshots" / "rb-x" / "nb-1-big-Data.db").write_bytes(b"d")
    (ks / "edgestore-1a" / "snapshots" / "rb-x-import").mkdir()
    (ks / "graphindex-2b" / "snapshots" / "dropped-1").mkdir()  # not ours: kept, with its folders
    (ks / "graphindex-2b" / "nb-2-big-Data.db").write_bytes(b"live")
    journal = tmp_path / "thb-rollback-x.json"
    journal.write_text("{}")
    LocalHost().run(["sh", "-c", DISCARD, "sh", str(journal), "rb-x", str(ks), str(tmp_path / "data2" / "thehive")])
    assert not (ks / "edgestore-1a").exists() and not journal.exists()
    assert sorted(p.name for p in (ks / "graphindex-2b").rglob("*")) == ["dropped-1", "nb-2-big-Data.db", "snapshots"]


# -- staging in four commands (a local host: real sh, tar and find) ---------------------------

class OneArchive:
    """The repository's ``get`` for one stored archive."""

    def __init__(self, data: bytes):
        self.data = data

    @contextmanager
    def get(self, key):
        yield iter([self.data])


@pytest.fixture
def archive(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "nb-1-big-Data.db").write_bytes(b"x" * 5000)
    (src / "nb-1-big-TOC.txt").write_text("TOC")
    data = subprocess.run(["tar", "-C", str(src), "-cf", "-", "."], capture_output=True, check=True).stdout
    entry = ObjectEntry(key="b/cassandra/n1/ks/t-1.tar", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                        component="cassandra", node="n1", keyspace="ks", table="t")
    return OneArchive(data), StagedArchive(entry, "n1", str(tmp_path / "staging" / "thb-restore-x"), "ks")


def test_stage_checks_what_arrived_then_a_rerun_resumes_from_the_marker(archive, tmp_path):
    repo, staged = archive
    host = LocalHost("n1")
    first = stage(host, repo, staged, owner_of=str(tmp_path))
    assert first["files"] == 2 and first["sstables"] == 1 and not first["resumed"]
    assert (Path(staged.folder) / "nb-1-big-Data.db").stat().st_size == 5000
    assert json.loads(Path(staged.marker).read_text())["files"] == {"nb-1-big-Data.db": 5000, "nb-1-big-TOC.txt": 3}
    resumed = stage(host, repo, staged)
    assert resumed["resumed"] and resumed["sstables"] == 1
    (Path(staged.folder) / "nb-1-big-Data.db").unlink()  # moved by an import that was then killed
    again = stage(host, repo, staged)
    assert not again["resumed"] and (Path(staged.folder) / "nb-1-big-Data.db").exists()


def test_staging_proves_the_archive_a_flipped_byte_fails_it_and_leaves_no_marker(archive, tmp_path):
    """A confirmed restore does not read the tables in its checks: staging hashes what it extracts."""
    repo, staged = archive
    data = bytearray(repo.data)
    data[data.index(b"x" * 5000) + 2500] ^= 0x01  # inside Data.db: the tar stays well formed
    with pytest.raises(StagingError, match="t-1.tar: SHA-256 mismatch"):
        stage(LocalHost("n1"), OneArchive(bytes(data)), staged)
    assert not Path(staged.marker).exists()


def test_probe_answers():
    assert parse_probe(10, b"") == (None, {})
    assert parse_probe(0, b'{"sha256": "x"}\0a/b\t3\nc\t0\n') == ({"sha256": "x"}, {"a/b": 3, "c": 0})
    assert parse_probe(1, b'{"sha256": "x"}\0') == ({"sha256": "x"}, {})  # folder gone
    assert parse_probe(0, b"not json\0") == (None, {})


def test_each_node_takes_its_biggest_archives_first():
    def staged(node, table, size):
        entry = ObjectEntry(key=f"k/{node}/{table}", size=size, sha256="0" * 64, component="cassandra",
                            node=node, keyspace="ks", table=table, raw_size=size * 3)
        return StagedArchive(entry, node, "/s", "ks")

    queues = by_node_biggest_first([staged("n1", "a", 1), staged("n2", "b", 5), staged("n1", "c", 9),
                                    staged("n1", "d", 4)])
    assert {n: [s.archive.table for s in q] for n, q in queues.items()} == {"n1": ["c", "d", "a"], "n2": ["b"]}


def test_journal_is_written_in_one_command_into_a_folder_it_creates(tmp_path):
    path = tmp_path / "staging" / "thb-rollback-x.json"
    LocalHost().stream_to(["sh", "-c", WRITE_JOURNAL, "sh", str(path), str(path.parent)], [b'{"a": 1}'])
    assert json.loads(path.read_text()) == {"a": 1} and not path.with_name(path.name + ".tmp").exists()
