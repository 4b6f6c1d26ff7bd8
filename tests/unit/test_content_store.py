"""Incremental mode without a stack (docs/FORMAT.md, "Incremental mode"): content names plain and
keyed, store-if-missing, the tar a restore stages from components, the manifest's parts, the
catalog's sizes and prune's reference counting."""
from __future__ import annotations

import hashlib
import hmac
import io
import os
import tarfile
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from tasks import layout, sstable_sweep
from tasks.catalog import component_sizes
from tasks.content_store import ContentMismatch, RunStore, content_key_id, content_name, known_components
from tasks.manifest import Manifest, ObjectEntry, parse_manifest, write_manifest
from tasks.parts_stream import ComponentCorrupt, parts_tar
from tasks.repositories import ObjectInfo
from tasks.repositories.crypto import Keyring, MasterKey
from tasks.repositories.encrypting import EncryptingRepository
from tasks.repositories.local import LocalRepository
from tasks.validate import check_part_paths, with_parts

RAW_KEY = os.urandom(32)


@pytest.fixture
def repo(tmp_path):
    return LocalRepository(tmp_path / "repo")


@pytest.fixture
def encrypted(tmp_path):
    return EncryptingRepository(LocalRepository(tmp_path / "enc"), Keyring(MasterKey.from_bytes(RAW_KEY, "key")))


def reader(data: bytes):
    @contextmanager
    def read():
        yield iter([data[i:i + 1000] for i in range(0, len(data), 1000)])
    return read


def put(run: RunStore, repo, path: str, data: bytes, compression="zstd"):
    return run.put(repo, path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                   compression=compression, read=reader(data))


def test_names_are_the_plain_sha256_or_keyed_with_encryption(repo, encrypted):
    digest = hashlib.sha256(b"component").hexdigest()
    assert content_name(repo, digest) == digest
    keyed = content_name(encrypted, digest)
    kc = MasterKey.from_bytes(RAW_KEY, "key").content_key
    assert keyed == hmac.new(kc, bytes.fromhex(digest), hashlib.sha256).hexdigest() != digest
    other = EncryptingRepository(repo, Keyring(MasterKey.from_bytes(os.urandom(32), "key")))
    assert content_name(other, digest) != keyed  # another key, unrelated names


def test_a_component_is_stored_once_whatever_its_file_name(repo):
    run = RunStore({})
    first = put(run, repo, "nb-1-big-Data.db", b"x" * 5000)
    again = put(run, repo, "nb-7-big-Data.db", b"x" * 5000)  # same bytes, another node's name
    other = put(run, repo, "nb-1-big-Data.db", b"y" * 5000)  # same name, other bytes
    assert first.added and not again.added and other.added
    assert again.key == first.key != other.key
    assert first.key == layout.sstable_key(hashlib.sha256(b"x" * 5000).hexdigest(), "zstd")
    assert (again.stored_size, again.stored_sha256) == (first.stored_size, first.stored_sha256)
    assert sorted(o.key for o in repo.list(layout.SSTABLES_PREFIX)) == sorted({first.key, other.key})


def test_a_known_component_missing_from_the_repository_is_sent_again(repo):
    run = RunStore({})
    part = put(run, repo, "a", b"data")
    repo.delete(part.key)
    assert put(RunStore(dict(run.known)), repo, "a", b"data").added
    assert repo.stat(part.key) is not None


def test_bytes_not_those_hashed_store_nothing(repo):
    run = RunStore({})
    with pytest.raises(ContentMismatch):
        run.put(repo, path="a", size=4, sha256=hashlib.sha256(b"data").hexdigest(), compression="none",
                read=reader(b"dat!"))
    assert list(repo.list(layout.SSTABLES_PREFIX)) == []


def table(parts, node="n1", table_dir="t-1") -> ObjectEntry:
    return ObjectEntry(key=layout.table_parts_key("hot-20261127-072100-3fa2", node, "thehive", table_dir),
                       size=10, sha256="0" * 64, component="cassandra", node=node, keyspace="thehive",
                       table="t", table_dir=table_dir, parts=parts)


@pytest.mark.parametrize("which", ["repo", "encrypted"])
def test_components_come_back_as_the_tar_staging_extracts(which, request):
    store = request.getfixturevalue(which)
    run = RunStore({})
    files = {"nb-1-big-Data.db": os.urandom(70_000), ".idx/nb-1-big-Index.db": b"i" * 512, "manifest.json": b""}
    entry = table([put(run, store, p, d) for p, d in files.items()])
    with tarfile.open(fileobj=io.BytesIO(b"".join(parts_tar(store, entry.parts))), mode="r:") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert got == files


def test_a_flipped_byte_in_a_component_fails_staging(tmp_path, repo):
    run = RunStore({})
    entry = table([put(run, repo, "Data.db", b"a" * 1000, compression="none")])
    path = tmp_path / "repo" / entry.parts[0].key  # type: ignore[index]
    path.write_bytes(b"b" + path.read_bytes()[1:])
    with pytest.raises(ComponentCorrupt, match=entry.parts[0].key):  # type: ignore[index]
        b"".join(parts_tar(repo, entry.parts))


def manifest(backup_id: str, entries: list[ObjectEntry]) -> Manifest:
    return Manifest(backup_id=backup_id, kind="hot", stack="s", started_at="x", finished_at="y",
                    components=["cassandra"], objects=entries)


def test_parts_round_trip_through_the_manifest_and_validation_sees_every_component(repo):
    run = RunStore({})
    shared = put(run, repo, "a", b"shared")
    m = manifest("hot-20261127-072100-3fa2", [table([shared, put(run, repo, "b", b"own")]),
                                              table([shared], node="n2")])
    again = parse_manifest(m.model_dump_json(exclude_none=True).encode(), "m")
    assert again.objects[0].parts == m.objects[0].parts
    checked = with_parts(again.objects)
    assert [o.key for o in checked[2:]] == [shared.key, again.objects[0].parts[1].key]  # type: ignore[index]
    assert checked[2].size == shared.stored_size and checked[2].sha256 == shared.stored_sha256



@pytest.mark.parametrize("path", ["../../../../etc/thb-pwned", "/etc/thb-pwned", "a/../../x"])
def test_a_part_path_outside_the_table_folder_is_unsafe(repo, path):
    """A component's path comes from the manifest: a hostile one is refused before staging."""
    run = RunStore({})
    good = table([put(run, repo, "a", b"a")])
    assert check_part_paths(good) is None
    bad = good.model_copy(update={"parts": [good.parts[0].model_copy(update={"path": path})]})  # type: ignore[index]
    assert "unsafe archive" in (check_part_paths(bad) or "")

def test_catalog_counts_added_and_shared_bytes(repo):
    run = RunStore({})
    old = put(run, repo, "a", b"a" * 10000)
    later = RunStore(dict(run.known))
    m = manifest("hot-20261127-072100-3fa2", [table([put(later, repo, "a", b"a" * 10000),
                                                     put(later, repo, "b", b"b" * 20000)])])
    sizes = component_sizes(m)
    assert sizes["shared_mib"] == round(old.stored_size / 2**20, 2)
    assert sizes["size_mib"] == round((10 + old.stored_size + m.objects[0].parts[1].stored_size)  # type: ignore[index]
                                      / 2**20, 2)


def test_known_components_are_those_of_readable_manifests(repo):
    run = RunStore({})
    a, b = put(run, repo, "a", b"a"), put(run, repo, "b", b"b")
    write_manifest(repo, manifest("hot-20261127-072100-3fa2", [table([a])]))
    write_manifest(repo, manifest("hot-20261128-072100-3fa2", [table([b])]))
    known, readable = known_components(repo)
    assert readable and set(known) == {a.key, b.key}
    known, _ = known_components(repo, frozenset({"hot-20261127-072100-3fa2"}))
    assert set(known) == {b.key}


@pytest.mark.parametrize("which", ["repo", "encrypted"])
def test_a_run_knows_the_names_of_files_kept_backups_listed_under_its_key(which, request):
    store = request.getfixturevalue(which)
    run = RunStore({})
    a = put(run, store, "nb-1-big-Data.db", b"a").model_copy(update={"ident": "77:1764356478.5"})
    b = put(run, store, "nb-1-big-TOC.txt", b"b")  # listed before identities were recorded
    file_id = ("n2", "t-9", "nb-1-big-Data.db", 1, "77:1764356478.5")
    key_id = content_key_id(store)
    assert (key_id is None) == (which == "repo") and a.name == content_name(store, hashlib.sha256(b"a").hexdigest())
    for written_under, named in ((key_id, {file_id: a.name}),
                                 ("0123456789abcdef", {}),  # before a rotation: its names are another key's
                                 (None, {} if key_id else {file_id: a.name})):  # encrypted, from before the field
        store.delete(layout.manifest_key("hot-20261127-072100-3fa2"))
        m = manifest("hot-20261127-072100-3fa2", [table([a, b], node="n2", table_dir="t-9")])
        write_manifest(store, m.model_copy(update={"content_key_id": written_under}))
        later = RunStore.from_repository(store)
        assert set(later.known) == {a.key, b.key} and later.named == named, written_under


KEY_A = layout.sstable_key("a" * 64, "zstd")
KEY_B = layout.sstable_key("b" * 64, "zstd")
STORED = [ObjectInfo(KEY_A, 10), ObjectInfo(KEY_B, 20), ObjectInfo("sstables/zz/not-ours", 5)]


def test_prune_removes_only_unreferenced_components():
    found = sstable_sweep.plan(STORED, {KEY_A}, True, [])
    assert (found.unreferenced, found.bytes, found.kept, found.skipped) == ([KEY_B], 20, 1, "")


def test_prune_removes_no_component_while_a_backup_may_run_or_a_manifest_is_unreadable():
    assert sstable_sweep.plan(STORED, {KEY_A}, True, ["hot-x"]).unreferenced == []
    assert "still be running" in sstable_sweep.plan(STORED, {KEY_A}, True, ["hot-x"]).skipped
    assert sstable_sweep.plan(STORED, {KEY_A}, False, []).skipped == "a manifest is unreadable"


def test_prune_grace_period_follows_the_started_marker_of_incomplete_backups(repo):
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    repo.put_bytes(KEY_B, b"orphan")
    young = layout.new_backup_id("hot", now - timedelta(hours=1))
    old = layout.new_backup_id("hot", now - timedelta(hours=30))
    assert sstable_sweep.plan_sweep(repo, [young], now, 24).unreferenced == []
    assert sstable_sweep.plan_sweep(repo, [old], now, 24).unreferenced == [KEY_B]


def test_the_fingerprint_is_the_archives(tmp_path):
    """The drill compares live tables by fingerprint: both modes must compute the same one."""
    from tasks.archive import TarStats, pack
    from tasks.table_archive import DIGEST, fingerprint_lines, sstable_lines
    from tasks.table_parts import Listed, fingerprint

    files = {"nb-1-big-Data.db": b"d" * 700, "nb-1-big-Digest.crc32": b"12345", "nb-2-big-Data.db": b"e" * 9,
             "manifest.json": b"{}"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stats = TarStats(keep=lambda n: n.endswith(DIGEST))
    b"".join(pack([buf.getvalue()], "none", stats, inventory=True))
    components = {p: Listed(len(d), hashlib.sha256(d).hexdigest(), "1:2") for p, d in files.items()}
    crcs = {p: d.decode() for p, d in files.items() if p.endswith(DIGEST)}
    assert fingerprint(components, crcs) == (2, fingerprint_lines(sstable_lines(stats)))


def test_table_tar_reads_both_storages_alike(repo):
    from tasks.archive import TarStats, pack
    from tasks.parts_stream import table_tar

    data = {"nb-1-big-Data.db": os.urandom(3000), "manifest.json": b"{}"}
    run = RunStore({})
    incremental = table([put(run, repo, p, d) for p, d in data.items()])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, body in data.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    key = layout.table_key("hot-20261127-072100-3fa2", "n1", "thehive", "t-1", "zstd")
    repo.put(key, pack([buf.getvalue()], "zstd", TarStats()))
    archive = incremental.model_copy(update={"key": key, "parts": None})
    for entry in (incremental, archive):
        stats = TarStats()
        with table_tar(repo, entry, stats) as stream:
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r:") as tar:
                got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        assert got == data and stats.files == 2
