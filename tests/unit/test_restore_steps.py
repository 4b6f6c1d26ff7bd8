"""The restore's steps in few commands: what the way back removes, staging's probe and check."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from flows.restore import by_node_biggest_first
from tasks.content_store import RunStore
from tasks.hosts import LocalHost
from tasks.manifest import ObjectEntry, SSTablePart
from tasks.parts_stream import ComponentCorrupt
from tasks.repositories.local import LocalRepository
from tasks.rollback import DISCARD, WRITE_JOURNAL
from tasks.staging import StagedArchive, StagingError, parse_probe, share_out, stage


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


# -- a big table's components over several streams --------------------------------------------

def part(path: str, size: int) -> SSTablePart:
    return SSTablePart(path=path, size=size, name="0" * 64, key=f"k/{path}", compression="none",
                       stored_size=size, stored_sha256="0" * 64)


def test_shares_are_balanced_by_bytes_and_a_small_table_keeps_one_stream():
    parts = [part("a-Data.db", 90 << 20), part("a-Index.db", 10 << 20), part("b-Data.db", 60 << 20),
             part("b-Index.db", 40 << 20)]
    shares = share_out(parts, 2)
    assert sorted(sum(p.size for p in s) for s in shares) == [100 << 20, 100 << 20]
    assert all(s == sorted(s, key=parts.index) for s in shares)  # listing order kept
    assert share_out(parts, 1) == [parts]
    assert share_out([part("x", 10), part("y", 10)], 4) == [[part("x", 10), part("y", 10)]]


@pytest.fixture
def big_table(tmp_path, monkeypatch):
    """A table of 12 components stored one by one, staged as if each were bigger than a group."""
    monkeypatch.setattr("tasks.staging.GROUP_BYTES", 1000)
    repo, run = LocalRepository(tmp_path / "repo"), RunStore({})
    files = {f"nb-{i}-big-{kind}": os.urandom(2000 + 97 * i) for i in range(1, 7) for kind in ("Data.db", "Index.db")}
    parts = [run.put(repo, path=p, size=len(d), sha256=hashlib.sha256(d).hexdigest(), compression="zstd",
                     read=lambda d=d: nullcontext(iter([d]))) for p, d in files.items()]
    entry = ObjectEntry(key="b/cassandra/n1/ks/t-1.parts.json", size=1, sha256="0" * 64, component="cassandra",
                        node="n1", keyspace="ks", table="t", parts=parts)
    return repo, files, StagedArchive(entry, "n1", str(tmp_path / "staging" / "thb-restore-x"), "ks")


def test_a_big_tables_components_stage_over_two_streams_each_with_its_own_connection(big_table, tmp_path):
    repo, files, staged = big_table
    opened = []

    def open_repo():
        opened.append(LocalRepository(tmp_path / "repo"))
        return opened[-1]

    got = stage(LocalHost("n1"), repo, staged, owner_of=str(tmp_path), streams=2, open_repo=open_repo)
    assert got["files"] == 12 and got["sstables"] == 6 and len(opened) == 1
    assert {p.name: p.read_bytes() for p in Path(staged.folder).iterdir()} == files
    assert json.loads(Path(staged.marker).read_text())["files"] == {p: len(d) for p, d in files.items()}


def test_a_damaged_component_in_one_stream_fails_staging_and_leaves_no_marker(big_table, tmp_path):
    repo, files, staged = big_table
    victim = staged.archive.parts[-1]
    path = tmp_path / "repo" / victim.key
    other = next(p for p in staged.archive.parts if p.key != victim.key)
    path.write_bytes((tmp_path / "repo" / other.key).read_bytes())  # another component's bytes
    with pytest.raises(ComponentCorrupt, match=victim.key):
        stage(LocalHost("n1"), repo, staged, streams=2, open_repo=lambda: LocalRepository(tmp_path / "repo"))
    assert not Path(staged.marker).exists()
