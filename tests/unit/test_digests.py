"""SSTable fingerprints, tar's "file changed" classification and the drill's verdicts, no services."""
from __future__ import annotations

import io
import tarfile
from collections import Counter

from tasks.archive import TarStats, pack
from tasks.drill import backup_fingerprints, verdicts
from tasks.hosts import CommandFailed
from tasks.manifest import Manifest, ObjectEntry, TableDigest, parse_manifest
from tasks.repositories.base import RepositoryError
from tasks.table_archive import _is_digest_file, fingerprint_lines, only_file_changed, sstable_lines


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def fingerprint_of(files: dict[str, bytes]) -> tuple[list[str], str]:
    stats = TarStats(keep=_is_digest_file)
    for _ in pack([tar_of(files)], "none", stats, inventory=True):
        pass
    return sstable_lines(stats), fingerprint_lines(sstable_lines(stats))


def test_fingerprint_is_sizes_and_crcs_whatever_the_names():
    lines, fp = fingerprint_of({"./nb-1-big-Data.db": b"x" * 10, "./nb-1-big-Digest.crc32": b"42\n",
                                "./nb-2-big-Data.db": b"y" * 3, "./manifest.json": b"{}",
                                "./nb-2-big-Index.db": b"i"})
    assert sorted(lines) == ["10 42", "3 -"]
    _, renamed = fingerprint_of({"./nb-7-big-Data.db": b"z" * 3, "./nb-9-big-Data.db": b"w" * 10,
                                 "./nb-9-big-Digest.crc32": b"42"})
    assert renamed == fp  # a re-import renames generations; same sizes and CRCs
    _, flushed = fingerprint_of({"./nb-1-big-Data.db": b"x" * 10, "./nb-1-big-Digest.crc32": b"42",
                                 "./nb-2-big-Data.db": b"y" * 3, "./nb-3-big-Data.db": b"n"})
    assert flushed != fp


def failed(code: int, stderr: str) -> CommandFailed:
    return CommandFailed("n1", ["tar", "-cf", "-", "."], code, stderr.encode())


def test_only_file_changed_alone_is_sent_again():
    changed = "tar: ./nb-1-big-Data.db: file changed as we read it"
    assert only_file_changed(failed(1, changed))
    assert only_file_changed(failed(1, changed + "\n" + changed.replace("nb-1", "nb-2")))
    assert not only_file_changed(failed(2, changed))
    assert not only_file_changed(failed(1, changed + "\ntar: ./x: Cannot open: Permission denied"))
    assert not only_file_changed(failed(1, "tar: ./x: file removed before we read it"))
    assert not only_file_changed(failed(1, ""))
    try:  # a repository error raised because of it (S3 wraps what its reader raised)
        try:
            raise failed(1, changed)
        except CommandFailed as exc:
            raise RepositoryError("writing x") from exc
    except RepositoryError as wrapped:
        assert only_file_changed(wrapped)
    assert not only_file_changed(RepositoryError("disk full"))


def manifest(objects: list[ObjectEntry]) -> Manifest:
    return Manifest(backup_id="hot-20261127-072100-3fa2", kind="hot", stack="s",
                    started_at="2026-11-27T07:21:00+00:00", finished_at="2026-11-27T07:22:00+00:00",
                    components=["cassandra"], objects=objects)


def table(node: str, name: str, fp: str | None, sstables: int | None = 1) -> ObjectEntry:
    return ObjectEntry(key=f"k/{node}/{name}", size=1, sha256="0" * 64, component="cassandra",
                       node=node, keyspace="thehive", table=name, table_dir=f"{name}-1",
                       sstables=sstables, fingerprint=fp)


def test_backup_fingerprints_per_node_and_table():
    m = manifest([table("n1", "edgestore", "a"), table("n2", "edgestore", "b"),
                  table("n1", "janusgraph_ids", "e", sstables=0)])
    assert backup_fingerprints(m, "thehive") == {("n1", "edgestore"): Counter({"a": 1}),
                                                 ("n2", "edgestore"): Counter({"b": 1})}
    assert backup_fingerprints(manifest([table("n1", "edgestore", None, None)]), "thehive") is None


def test_older_manifests_read_without_fingerprints():
    raw = manifest([table("n1", "edgestore", None, None)]).model_dump_json(exclude_none=True)
    assert parse_manifest(raw.encode(), "m").objects[0].fingerprint is None


def test_verdicts_prefer_recorded_then_live_and_name_what_is_unproved():
    same, other = TableDigest(rows=2, digest="aa"), TableDigest(rows=2, digest="bb")
    got = {"edgestore": same, "graphindex": same}
    recorded = verdicts(got, {"edgestore": same, "graphindex": other}, {})
    assert [(v.basis, v.content) for v in recorded] == [("recorded", "identical"), ("recorded", "DIFFERENT")]
    live = verdicts(got, None, {"edgestore": same})
    assert [(v.table, v.basis, v.expected) for v in live] == [("edgestore", "live", same),
                                                              ("graphindex", "none", None)]
    assert live[1].content.startswith("not compared")
