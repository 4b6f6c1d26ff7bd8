"""Incremental mode on the real 3-node stack (docs/FORMAT.md, "Incremental mode"): a second backup
sends next to nothing, a third only what was written, the restore of a shared-component backup
compares every row and its drill proves every table, verify names a corrupted shared object,
prune reference-counts; with encryption, components carry keyed names only."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

import pytest
import yaml
from cassandra import ConsistencyLevel

from config import load_stack
from flows.hot_backup import hot_backup
from flows.prune import prune
from flows.restore import restore
from flows.verify import VerificationFailed, restore_drill, verify_backup
from tasks import layout, table_parts
from tasks.archive import decompress
from tasks.manifest import read_manifest
from tasks.repositories import open_repository
from tasks.repositories.crypto import MasterKey
from tests.stack import seed
from tests.stack.fastseed import wait_for_compactions

pytestmark = [pytest.mark.usefixtures("prefect_server", "seeded3"), pytest.mark.timeout(2400),
              pytest.mark.long]  # make test-long

KEY = os.urandom(32)
KEY_ENV = "THB_TEST_INCR_KEY"
TARGET = "thehive_incr"


def incremental(make_stack, repo: str | dict = "local"):
    """A stack file with ``cassandra.storage: incremental``."""
    path, _ = make_stack(repo)
    data = yaml.safe_load(path.read_text())
    data["cassandra"]["storage"] = "incremental"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, load_stack(path)


def listing(stack) -> dict[str, int]:
    with open_repository(stack) as repo:
        return {o.key: o.size for o in repo.list()}


def added(before: dict[str, int], after: dict[str, int], prefix: str = "") -> int:
    return sum(size for key, size in after.items() if key not in before and key.startswith(prefix))


def test_incremental_backups_restore_verify_and_prune(real_stack, cluster3, make_stack):
    path, stack = incremental(make_stack)
    run = lambda: hot_backup(stack=str(path), components=["cassandra"])["backup_id"]  # noqa: E731
    b1 = run()
    after1 = listing(stack)
    b2 = run()
    after2 = listing(stack)
    component_bytes = added({}, after1, layout.SSTABLES_PREFIX)
    assert component_bytes > 1_000_000
    # no change: the components are all stored (only the snapshots' own manifest.json differ)
    assert added(after1, after2, layout.SSTABLES_PREFIX) < 0.01 * component_bytes
    print(f"backup 1: {added({}, after1)} bytes, backup 2: {added(after1, after2)} bytes "
          f"({added(after1, after2, layout.SSTABLES_PREFIX)} of them components)")

    session = cluster3.session()
    try:
        insert = session.prepare("INSERT INTO thehive.system_properties (key, column1, value) VALUES (?, ?, ?)")
        # at ALL: a replica that missed a row gets it from the drill's own read at ALL (read
        # repair), flushes a new SSTable, and the drill can no longer prove the table live
        insert.consistency_level = ConsistencyLevel.ALL
        for i in range(300):
            session.execute(insert, [b"incr-%d" % i, b"c", os.urandom(64)])
        b3 = run()
        after3 = listing(stack)
        with open_repository(stack) as repo:
            m3 = read_manifest(repo, b3)
        new = [(o.table, p.path) for o in m3.objects for p in o.parts or [] if p.added]
        assert any(t == "system_properties" and p.endswith("-Data.db") for t, p in new)
        assert {p for t, p in new if t != "system_properties"} <= {"manifest.json"}  # nothing else changed
        assert added(after2, after3, layout.SSTABLES_PREFIX) < 0.05 * component_bytes

        live = seed.cluster_fingerprint(cluster3)
        restore(stack=str(path), backup_id=b3, components=["cassandra"], target_keyspace=TARGET,
                confirm=True)
        assert seed.cluster_fingerprint(cluster3, TARGET) == live
        assert live["system_properties"][0] >= 300
        drill = restore_drill(stack=str(path), backup_id=b3)  # live SSTables still backup 3's
        assert drill["identical"] and drill["not_compared"] == []
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {TARGET}")
        for i in range(300):
            session.execute("DELETE FROM thehive.system_properties WHERE key = %s", [b"incr-%d" % i])
        session.cluster.shutdown()

    assert verify_backup(stack=str(path), backup_id=b3)["ok"]
    shared = next(p for o in m3.objects for p in o.parts or [] if not p.added and p.path.endswith("-Data.db"))
    stored = Path(stack.repository.path) / shared.key
    original = stored.read_bytes()
    stored.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    try:
        with pytest.raises(VerificationFailed, match=shared.key):
            verify_backup(stack=str(path), backup_id=b3)
    finally:
        stored.write_bytes(original)

    # prune backup 1: every component backups 2 and 3 reference stays; an unreferenced one (a
    # failed run's leftover) goes only when no incomplete backup is within the grace period
    orphan = layout.sstable_key(hashlib.sha256(b"orphan").hexdigest(), "none")
    running = layout.new_backup_id("hot")
    with open_repository(stack) as repo:
        repo.put_bytes(orphan, b"orphan")
        repo.put_bytes(layout.started_key(running), json.dumps({"backup_id": running}).encode())
    first = prune(stack=str(path), keep_last=2, dry_run=False)
    assert first["deleted"] == [b1] and "may still be running" in first["sstables"]["skipped"]
    assert orphan in listing(stack)
    second = prune(stack=str(path), keep_last=2, incomplete_after_hours=0, dry_run=False)
    assert second["deleted"] == [running] and second["sstables"]["unreferenced"] >= 1
    left = listing(stack)
    assert orphan not in left
    with open_repository(stack) as repo:
        needed = {p.key for b in (b2, b3) for o in read_manifest(repo, b).objects for p in o.parts or []}
    assert needed and needed <= set(left)
    assert {k for k in left if k.startswith(layout.SSTABLES_PREFIX)} == needed


@pytest.fixture
def no_compaction(cluster3):
    """No compaction between two backups that must find nothing new (an earlier test's restore
    may leave some pending, and a flush may start one)."""
    for node in cluster3.nodes:
        cluster3.nodetool(node, "disableautocompaction", "thehive")
    wait_for_compactions(cluster3)
    yield
    for node in cluster3.nodes:
        cluster3.nodetool(node, "enableautocompaction", "thehive")


def test_encrypted_components_have_keyed_names_only(real_stack, make_stack, monkeypatch, no_compaction):
    monkeypatch.setenv(KEY_ENV, KEY.hex())
    repository = {**real_stack.repository("local", f"incr-enc-{os.urandom(3).hex()}"),
                  "encryption": {"key": {"env": KEY_ENV}}}
    path, stack = incremental(make_stack, repository)
    hashed: list[str] = []
    hash_files = table_parts.hash_files

    def counting(host, root, paths):
        hashed.extend(paths)
        return hash_files(host, root, paths)

    monkeypatch.setattr(table_parts, "hash_files", counting)
    b1 = hot_backup(stack=str(path), components=["cassandra"])["backup_id"]
    first_hashed, hashed[:] = len(hashed), []
    before = listing(stack)
    b2 = hot_backup(stack=str(path), components=["cassandra"])["backup_id"]
    # the second backup knows the files the first listed by their keyed names: none read again
    # but each snapshot's own new manifest.json and schema.cql
    assert first_hashed > 20 and hashed and set(hashed) <= {"manifest.json", "schema.cql"}, hashed
    kc = MasterKey.from_bytes(KEY, "key").content_key
    with open_repository(stack) as repo:
        m = read_manifest(repo, b1)
        parts = {p.key: p for o in m.objects for p in o.parts or []}
        assert len(parts) > 20
        plain_names = set()
        for part in list(parts.values())[:40]:
            with repo.get(part.key) as chunks:
                plain = b"".join(decompress(chunks, part.compression))  # type: ignore[arg-type]
            digest = hashlib.sha256(plain).digest()
            assert part.name == hmac.new(kc, digest, hashlib.sha256).hexdigest()
            plain_names.add(digest.hex())
        names = {layout.parse_key(o.key).name for o in repo.list(layout.SSTABLES_PREFIX)}
    assert names and not names & plain_names  # no component is named by its plain hash
    assert added(before, listing(stack), layout.SSTABLES_PREFIX) < 0.01 * sum(
        s for k, s in before.items() if k.startswith(layout.SSTABLES_PREFIX))
    assert verify_backup(stack=str(path), backup_id=b2)["ok"]
