"""Cold backup and cold restore against the real stack: the 3-node Cassandra 4.1 cluster, Elasticsearch
and the TheHive stand-in are really stopped and started through their `command` managers (the very
scripts the fixtures use), their folders really copied, wiped and restored.

Every test leaves every service running and the data as it found it (the services are shared with the
other modules of the session).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from flows import lifecycle
from flows.cold_backup import cold_backup
from flows.cold_restore import RestoreRefused, cold_restore
from tasks.manifest import read_manifest
from tasks.repositories import open_repository
from tasks.validate import check_object
from tests.stack.cold import SERVICES, clear, cold_stack, ensure_running, fingerprints, unhealthy

pytestmark = pytest.mark.usefixtures("prefect_server", "seeded3")


def test_cold_backup_wipe_and_cold_restore_give_identical_data(backed_up, real_stack, cluster3,
                                                                seeded3):
    st, backup_id = backed_up.stack, backed_up.result["backup_id"]
    assert backed_up.result["restart"] == "ok"
    assert unhealthy(st) == {}
    assert fingerprints(real_stack, cluster3) == backed_up.before  # the backup changed nothing

    with open_repository(st) as repo:
        manifest = read_manifest(repo, backup_id)
        assert manifest.kind == "cold"
        assert [check_object(repo, o) for o in manifest.objects] == [None] * len(manifest.objects)
        keys = {o.key for o in manifest.objects}
        for node in cluster3.nodes:
            for name in ("data", "commitlog"):
                assert f"{backup_id}/cold/{node.name}/cassandra/{name}.tar.zst" in keys
        assert f"{backup_id}/cold/hive/elasticsearch/data.tar.zst" in keys
        assert f"{backup_id}/cold/hive/thehive/attachments.tar.zst" in keys
        inventory = json.loads(repo.get_bytes(f"{backup_id}/cold/hive/thehive/attachments.inventory.json"))
        es_inventory = json.loads(repo.get_bytes(f"{backup_id}/cold/hive/elasticsearch/data.inventory.json"))
    files = {e["path"]: e for e in inventory["files"] if e["sha256"]}
    assert {p: e["sha256"] for p, e in files.items()} == seeded3["files"]
    assert all({"size", "mode", "owner", "group", "uid", "gid"} <= set(e) for e in files.values())
    assert {e["owner"] for e in es_inventory["files"]} == {"elasticsearch"}
    assert manifest.cold.downtime_seconds > 0 and manifest.cold.restart == "ok"

    # A running stack is never restored into.
    with pytest.raises(RestoreRefused, match="running"):
        cold_restore(stack=str(backed_up.path), backup_id=backup_id)

    es_data = real_stack.elasticsearch.service.dir / "data"
    aside = Path(f"{real_stack.files_dir}.before-{backup_id}")
    lifecycle.stop_in_order(st, [], plain=True)
    try:
        # Lose the data: Cassandra data and commitlog on every node, the index, the attachments.
        for node in cluster3.nodes:
            clear(node.data_dir)
            clear(node.commitlog_dir)
        clear(es_data)
        clear(real_stack.files_dir)
        (real_stack.files_dir / "junk").write_text("written after the backup")

        # A non-empty target is refused, and nothing is touched.
        with pytest.raises(RestoreRefused, match=r"files is not empty \(wipe=True moves it"):
            cold_restore(stack=str(backed_up.path), backup_id=backup_id)
        assert list(real_stack.files_dir.iterdir()) == [real_stack.files_dir / "junk"]
        assert not [p for node in cluster3.nodes for p in node.data_dir.iterdir()]
    finally:
        # Always: the other modules of the session need their data back.
        try:
            result = cold_restore(stack=str(backed_up.path), backup_id=backup_id, wipe=True)
        finally:
            ensure_running(st)
    try:
        assert result["restart"] == "ok"
        assert unhealthy(st) == {}
        assert fingerprints(real_stack, cluster3) == backed_up.before
        # Moved aside, never deleted.
        assert result["moved_aside"] == {f"hive:{real_stack.files_dir}": str(aside)}
        assert (aside / "junk").read_text() == "written after the backup"
        # Owners and modes as saved: Elasticsearch's files belong to its user again.
        owners = {p.owner() for p in es_data.rglob("*")}
        assert owners == {"elasticsearch"}
        ev = result["events"]
        last_extract = max(e["t"] for e in ev if e["event"] == "extracted")
        assert last_extract <= min(e["t"] for e in ev if e["event"] == "start")
        assert [e["service"] for e in ev if e["event"] == "healthy"] == ["cassandra", "elasticsearch",
                                                                         "thehive"]
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def test_cold_backup_order_and_waits_from_recorded_events(backed_up, cluster3):
    ev = backed_up.result["events"]
    nodes = {"cassandra": {n.name for n in cluster3.nodes}, "elasticsearch": {"hive"}, "thehive": {"hive"}}

    def times(kind: str, service: str | None = None) -> list[float]:
        return [e["t"] for e in ev if e["event"] == kind and (service is None or e["service"] == service)]

    assert [e["t"] for e in ev] == sorted(e["t"] for e in ev)
    for svc in SERVICES:  # every node stopped, and waited for, then started
        assert {e["node"] for e in ev if e["event"] == "stopped" and e["service"] == svc} == nodes[svc]
        assert {e["node"] for e in ev if e["event"] == "started" and e["service"] == svc} == nodes[svc]
    # Stop order: TheHive, then Elasticsearch, then Cassandra; each really stopped before the next.
    assert max(times("stopped", "thehive")) <= min(times("stop", "elasticsearch"))
    assert max(times("stopped", "elasticsearch")) <= min(times("drain", "cassandra"))
    for node in nodes["cassandra"]:
        seq = [e["event"] for e in ev if e["service"] == "cassandra" and e["node"] == node
               and e["event"] in ("drain", "drained", "stop", "stopped")]
        assert seq == ["drain", "drained", "stop", "stopped"]
    # The stopped event says which endpoint was found closed.
    assert all(e["closed"] for e in ev if e["event"] == "stopped" and e["service"] == "cassandra")
    # Copies only while everything is stopped.
    assert len(times("copied")) == 3 * 2 + 2
    assert min(times("copy")) >= max(times("stopped"))
    assert max(times("copied")) <= min(times("start"))
    # Start order: Cassandra's first node alone, then the others, all UN; Elasticsearch; TheHive.
    first = cluster3.nodes[0].name
    first_started = next(e["t"] for e in ev if e["event"] == "started" and e["node"] == first)
    assert first_started <= min(e["t"] for e in ev if e["event"] == "start" and e["service"] == "cassandra"
                                and e["node"] != first)
    assert max(times("started", "cassandra")) <= times("healthy", "cassandra")[0]
    assert times("healthy", "cassandra")[0] <= min(times("start", "elasticsearch"))
    assert times("healthy", "elasticsearch")[0] <= min(times("start", "thehive"))
    assert ev[-1]["event"] == "healthy" and ev[-1]["service"] == "thehive"
    # Downtime: first stop to last healthy.
    assert backed_up.result["downtime"] == pytest.approx(ev[-1]["t"] - ev[0]["t"], abs=0.01)
    assert ev[0]["event"] == "stop" and ev[0]["service"] == "thehive"


def test_copy_failing_half_way_still_restarts_everything_and_writes_no_manifest(
        real_stack, cluster3, thehive, tmp_path):
    """The repository (a tmpfs with room for every folder when preflight measures them) is filled
    by another writer once the stack is stopped — here an ``after_stop`` hook — so a copy fails
    with ENOSPC half-way. The stack must come back healthy and the run fail naming the cause."""
    mount = tmp_path / "repo"
    mount.mkdir()
    fill = (f"avail=$(df -k --output=avail {mount} | tail -1); "
            f"head -c $(( (avail - 256) * 1024 )) /dev/zero > {mount}/filler")
    path, stack = cold_stack(real_stack, cluster3, tmp_path, repository={"kind": "local", "path": str(mount)},
                             hooks={"after_stop": [{"node": "hive", "argv": ["sh", "-c", fill]}]})
    before = fingerprints(real_stack, cluster3)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)], check=True)
    try:
        state = cold_backup(stack=str(path), return_state=True)
        assert state.is_failed()
        assert "No space left on device" in state.message
        assert "restart: ok" in state.message
        with open_repository(stack) as repo:
            assert not [o for o in repo.list() if o.key.endswith("manifest.json")]
    finally:
        ensure_running(stack)
        subprocess.run(["umount", str(mount)], check=True)
    assert unhealthy(stack) == {}
    assert fingerprints(real_stack, cluster3) == before
