"""Node rebuild on the real 3-node cluster: a wrecked node back from a hot backup with system
keyspaces, and a rebuild whose start fails leaving the node exactly as it was."""
from __future__ import annotations

import io
import json
import shutil
import sys
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from cassandra import ConsistencyLevel
from cassandra.query import SimpleStatement

from config import load_stack
from flows.hot_backup import hot_backup
from flows.node_rebuild import RebuildFailed, node_rebuild
from tasks import rebuild
from tasks.archive import compress, compression_of, decompress
from tasks.cassandra import cql_session
from tasks.manifest import Digest, read_manifest, write_manifest
from tasks.repositories import open_repository
from tests.stack import treehash
from tests.stack.proc import wait_until

pytestmark = pytest.mark.usefixtures("prefect_server")
KS = "rebuild_test"
ROWS = 200
LATE = 10_000  # a row written after the backup


@pytest.fixture(scope="module")
def sys_backup(cluster3, session_stack):
    """A small keyspace (RF 3) and one hot backup of it with every node's system keyspaces."""
    path, stack = session_stack("local", with_elasticsearch=False, with_thehive=False)
    session = cluster3.session()
    session.execute(f"DROP KEYSPACE IF EXISTS {KS}")
    session.execute(f"CREATE KEYSPACE {KS} WITH replication = {{'class': 'NetworkTopologyStrategy', 'dc1': 3}}")
    session.execute(f"CREATE TABLE {KS}.t (id int PRIMARY KEY, v text)")
    insert = session.prepare(f"INSERT INTO {KS}.t (id, v) VALUES (?, ?)")
    insert.consistency_level = ConsistencyLevel.ALL
    rows = {i: f"row {i} " + "x" * (i % 50) for i in range(ROWS)}
    for i, v in rows.items():
        session.execute(insert, (i, v))
    result = hot_backup(stack=str(path), components=["cassandra"], keyspaces=[KS], record_digests=False,
                        include_system_keyspaces=True)
    with open_repository(stack) as repo:
        manifest = read_manifest(repo, result["backup_id"])
    return SimpleNamespace(path=path, stack=stack, rows=rows, id=result["backup_id"], manifest=manifest,
                           insert=insert, session=session)


def read_alone(stack, address: str) -> dict[int, str]:
    with cql_session(stack, contact_points=[address]) as s:
        stmt = SimpleStatement(f"SELECT id, v FROM {KS}.t", consistency_level=ConsistencyLevel.ONE)
        return {r.id: r.v for r in s.execute(stmt)}


def all_up(cluster3) -> None:
    for n in cluster3.nodes:
        cluster3.start_node(n)
    for n in cluster3.nodes:
        wait_until(lambda n=n: cluster3._all_up_normal(n), f"{n.name}: all UN", 240, n.service, interval=1)


def rows_of_node_2_alone(b, cluster3) -> dict[int, str]:
    """Every row node 2 serves with nodes 1 and 3 stopped (started again afterwards)."""
    n1, n2, n3 = cluster3.nodes
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(cluster3.stop_node, [n1, n3]))
    try:
        return read_alone(b.stack, n2.address)
    finally:
        all_up(cluster3)


def test_backup_records_system_keyspaces_apart(sys_backup, cluster3):
    c = sys_backup.manifest.cassandra
    assert set(c.keyspaces) == {KS}  # restores and drills see only the backup's own keyspaces
    for n in cluster3.nodes:
        assert {"system", "system_schema", "system_auth", "system_distributed",
                "system_traces"} <= set(c.system_keyspaces[n.name])
    local = [o for o in sys_backup.manifest.objects if o.keyspace == "system" and o.table == "local"]
    assert {o.node for o in local} == {n.name for n in cluster3.nodes}


def test_wrecked_node_is_rebuilt_from_the_backup_alone(sys_backup, cluster3):
    b, n1, n2, n3 = sys_backup, *cluster3.nodes
    b.session.execute(b.insert, (LATE, "after the backup"))
    recorded = {n.name: n.host_id for n in b.manifest.cassandra.nodes}
    dry = node_rebuild(stack=str(b.path), node=n2.name)
    assert dry["dry_run"] and dry["backup_id"] == b.id and dry["objects"] > 30

    n2.service.stop()  # wrecked: data (system tables included) and commitlog gone
    shutil.rmtree(n2.data_dir)
    shutil.rmtree(n2.commitlog_dir)
    served, failed, done = [0], [], threading.Event()

    def reader() -> None:  # the other nodes keep serving at QUORUM throughout
        with cql_session(b.stack, contact_points=[n1.address, n3.address]) as s:
            stmt = SimpleStatement(f"SELECT v FROM {KS}.t WHERE id = 7",
                                   consistency_level=ConsistencyLevel.QUORUM)
            while not done.wait(0.5):
                try:
                    assert s.execute(stmt).one().v == b.rows[7]
                    served[0] += 1
                except Exception as exc:
                    failed.append(repr(exc))

    t = threading.Thread(target=reader)
    t.start()
    try:
        result = node_rebuild(stack=str(b.path), node=n2.name, confirm=True)
    finally:
        done.set()
        t.join()
    print("rebuild timings", result["timings"], "reads served meanwhile", served[0])
    assert failed == [] and served[0] > 5
    assert result["host_id"] == recorded[n2.name] and result["startup_complete_logged"]
    assert result["repair_advisable"] and "nodetool repair" in result["repair_advice"]
    assert not list(n2.commitlog_dir.parent.glob("*.restoring-*.json"))  # journals gone once done

    # every row of the backup, from node 2 alone; the later write is not there
    assert rows_of_node_2_alone(b, cluster3) == b.rows

    # The repair the report advises (node_rebuild(repair=True) runs this same step once the node
    # is up): the write made after the backup reaches node 2 from its replicas.
    print("repair:", rebuild.repair(b.stack, n2.name)[-300:])  # nodetool fails the call if it fails
    assert rows_of_node_2_alone(b, cluster3) == {**b.rows, LATE: "after the backup"}


def _corrupt_system_local(stack, backup_id: str, node: str) -> int:
    """Overwrite the middle of every system.local Data.db of ``node`` in the backup, and record the
    new archive's size and SHA-256 so that validation passes: only Cassandra can find it."""
    with open_repository(stack) as repo:
        manifest = read_manifest(repo, backup_id)
        changed = 0
        for i, o in enumerate(manifest.objects):
            if not (o.node == node and o.keyspace == "system" and o.table == "local"):
                continue
            kind = compression_of(o.key)
            with repo.get(o.key) as chunks:
                raw = b"".join(decompress(chunks, kind))
            out = io.BytesIO()
            with tarfile.open(fileobj=io.BytesIO(raw)) as src, \
                    tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
                for m in src:
                    data = src.extractfile(m).read() if m.isfile() else None
                    if data and m.name.endswith("-Data.db"):
                        mid = len(data) // 2
                        data = data[:8] + bytes(b ^ 0xFF for b in data[8:mid + 8]) + data[mid + 8:]
                        changed += 1
                    dst.addfile(m, io.BytesIO(data) if data is not None else None)
            body = b"".join(compress([out.getvalue()], kind))
            repo.put_bytes(o.key, body)
            d = Digest()
            for _ in d.through([body]):
                pass
            manifest.objects[i] = o.model_copy(update={"size": d.size, "sha256": d.sha256})
        write_manifest(repo, manifest)
    return changed


def test_a_rebuild_whose_start_fails_leaves_the_node_as_it_was(sys_backup, real_stack, cluster3, tmp_path):
    b, n2 = sys_backup, cluster3.nodes[1]
    copy = tmp_path / "repo"
    shutil.copytree(b.stack.repository.path, copy)
    data = real_stack.stack_data(cluster3, {"kind": "local", "path": str(copy)},
                                 with_elasticsearch=False, with_thehive=False)
    # Each start through the stack records the node's folders first (the put-back start is the last).
    starts = tmp_path / "starts"
    starts.mkdir()
    folders = [str(n2.data_dir), str(n2.commitlog_dir), str(n2.hints_dir), str(n2.saved_caches_dir)]
    wrapper = tmp_path / "start"
    wrapper.write_text(f"#!/bin/sh\nset -e\n{sys.executable} {Path(treehash.__file__)} "
                       f"{starts}/$(date +%s%N).json {' '.join(folders)}\n"
                       f"exec {real_stack.root}/cassandra/\"$1\"/bin/start\n")
    wrapper.chmod(0o755)
    cass = data["services"][0]
    cass["manager"]["start"] = [str(wrapper), "{node}"]
    cass["start_timeout"] = 180
    path = real_stack.write_stack_file(tmp_path / "stack.yaml", data)
    stack = load_stack(path)
    assert _corrupt_system_local(stack, b.id, n2.name) >= 1

    cluster3.nodetool(n2, "drain")
    n2.service.stop()
    before = treehash.trees(folders)
    asides = set(Path(folders[0]).parent.glob("*.before-*"))  # an earlier rebuild's, kept
    try:
        with pytest.raises(RebuildFailed) as failed:
            node_rebuild(stack=str(path), node=n2.name, backup_id=b.id, confirm=True)
    finally:
        all_up(cluster3)
    assert "started as it was" in str(failed.value)
    recorded = sorted(starts.iterdir())
    assert len(recorded) == 2  # the rebuilt node's start, then the put-back one
    assert json.loads(recorded[-1].read_text()) == before  # every file, owner and mode as before
    assert not list(Path(folders[0]).parent.glob("*.restoring-*.json"))
    assert set(Path(folders[0]).parent.glob("*.before-*")) == asides  # all moved back
    got = read_alone(stack, n2.address)
    assert {k: got.get(k) for k in b.rows} == b.rows
