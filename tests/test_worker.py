"""The flows as operators run them: prefect.yaml deployed on a real Prefect server, a real process
worker (``prefect worker start``) polling the pool, runs started with ``run_deployment``, secrets
read from Prefect Secret blocks, the stack named by the Prefect Variable.

The worker has none of the harness's password variables: a run that finds the Cassandra
password did read it from its Secret block.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from config import load_stack
from config.model import Stack
from tasks import cassandra
from tasks.catalog import catalog
from tasks.hosts import host_for
from tasks.layout import SNAPSHOT_TAG, repository_id, snapshot_tag
from tasks.lock import LOCK_KEY, read_holder
from tasks.manifest import read_manifest
from tasks.repositories import open_repository
from tests.stack import prefect_ops
from tests.stack.stack import streaming_backup

pytestmark = pytest.mark.usefixtures("seeded3", "standin3")
HOT = "hot-backup/nightly-hot-backup"
#: A table streams for seconds: bzip2, one table at a time per node.
SLOW = dict(compression="bzip2", tables_per_node=1, record_digests=False)


def worker_log(service: Any) -> str:
    return f"\n--- worker log ---\n{service.log_tail(60)}"


def our_snapshots(stack: Stack) -> dict[str, set[str]]:
    """Per Cassandra node, the snapshot tags of this stack's repository (nodetool listsnapshots)."""
    with open_repository(stack) as repo:
        rid = repository_id(repo.url)
    found = {}
    for node in stack.nodes_with("cassandra"):
        with host_for(stack, node) as host:
            tags = cassandra.list_snapshots(host, stack.cassandra.settings_for(node.name))
        found[node.name] = {t for t in tags if (m := SNAPSHOT_TAG.match(t)) and m["repo"] == rid}
    return found


def test_hot_backup_verify_and_drill_run_through_their_deployments(process_worker, real_stack,
                                                                    cluster3, tmp_path):
    path, stack = prefect_ops.secret_stack(real_stack, cluster3, tmp_path)
    prefect_ops.set_stack_variable(str(path))  # no run below names a stack

    t0 = time.monotonic()
    backup = prefect_ops.run_and_wait(HOT, {"label": "through the worker"})
    assert backup.state.is_completed(), f"{backup.state.name}: {backup.state.message}{worker_log(process_worker)}"
    assert backup.deployment_id and backup.work_queue_name == "default"
    with open_repository(stack) as repo:
        rows = catalog(repo)
        assert [r["status"] for r in rows] == ["complete"]
        manifest = read_manifest(repo, rows[0]["id"])
    assert manifest.label == "through the worker"
    assert set(manifest.components) == {"cassandra", "elasticsearch", "files"}
    assert {o.table for o in manifest.objects if o.table}  # every node's tables were streamed
    seconds = {"hot backup": time.monotonic() - t0}

    t0 = time.monotonic()
    verify = prefect_ops.run_and_wait("verify-backup/weekly-verify")
    assert verify.state.is_completed(), f"{verify.state.message}{worker_log(process_worker)}"
    assert prefect_ops.artifact_data(verify.id, "verify-backup") == [{"problem": "none"}]
    seconds["verify"] = time.monotonic() - t0

    t0 = time.monotonic()
    drill = prefect_ops.run_and_wait("restore-drill/weekly-restore-drill",
                                     {"backup_id": manifest.backup_id})
    assert drill.state.is_completed(), f"{drill.state.message}{worker_log(process_worker)}"
    table = prefect_ops.artifact_data(drill.id, "restore-drill")
    # A default backup records no row digests: the drill proves each table against the live one
    # (its SSTables are still the backed-up ones: nothing wrote meanwhile).
    tables = manifest.cassandra.keyspaces["thehive"].tables if manifest.cassandra else {}
    assert tables and {r["table"] for r in table} == set(tables)
    assert all(r["content"] == "identical" and r["compared with"] == "live"
               and r["rows restored"] == r["rows expected"] for r in table), table
    seconds["drill"] = time.monotonic() - t0
    assert our_snapshots(stack) == {n.name: set() for n in stack.nodes_with("cassandra")}
    print("through the worker (s):", {k: round(v, 1) for k, v in seconds.items()})


@pytest.fixture(scope="module")
def bulk3(cluster3, seeded3) -> str:
    """A keyspace on the 3-node cluster big enough that a hot backup streams for a while."""
    from tests.stack import fastseed

    fastseed.fast_seed(cluster3, "thehive_bulk", size_mb=40, seed=3)
    return "thehive_bulk"


def test_cancelling_a_running_hot_backup_clears_snapshots_and_lock_and_writes_no_manifest(
        process_worker, real_stack, cluster3, bulk3, tmp_path):
    path, stack = prefect_ops.secret_stack(real_stack, cluster3, tmp_path)
    assert stack.repository.kind == "local"
    root = Path(stack.repository.path)
    run = prefect_ops.run_deployment_nowait(HOT, {"stack": str(path), "components": ["cassandra"],
                                                  "keyspaces": [bulk3], **SLOW})

    backup_id = None
    deadline = time.monotonic() + 600
    while backup_id is None:  # mid-stream: a table archive is being written
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run.id).state
        assert state and not state.is_final(), f"ended before mid-stream: {state}{worker_log(process_worker)}"
        assert time.monotonic() < deadline, f"no table archive started{worker_log(process_worker)}"
        backup_id = streaming_backup(root)
        time.sleep(0.05)
    with open_repository(stack) as repo:
        tag = snapshot_tag(backup_id, repository_id(repo.url))
        assert read_holder(repo, LOCK_KEY) is not None
    assert all(tag in tags for tags in our_snapshots(stack).values())  # pinned on every node

    final, seconds = prefect_ops.cancel_and_wait(run.id, "test: cancelled mid-stream")
    assert final.state.is_cancelled(), f"{final.state.name}: {final.state.message}{worker_log(process_worker)}"

    assert our_snapshots(stack) == {n.name: set() for n in stack.nodes_with("cassandra")}, \
        worker_log(process_worker)
    with open_repository(stack) as repo:
        assert read_holder(repo, LOCK_KEY) is None
        assert [(r["id"], r["status"]) for r in catalog(repo)] == [(backup_id, "incomplete")]
    assert not (root / backup_id / "manifest.json").exists()
    time.sleep(5)  # nothing left running writes it later either
    assert not (root / backup_id / "manifest.json").exists()
    assert seconds < 120, f"cancellation took {seconds:.0f}s"
    print(f"cancelled mid-stream: Cancelled, snapshots and lock cleared in {seconds:.1f}s")


def test_a_secret_block_reference_resolves_on_the_server_and_never_shows(prefect_server, tmp_path):
    import yaml

    from config.model import SecretNotFound

    prefect_ops.save_secret("thb-test-es-password", "es-s3cr3t-value")
    data = {"name": "blocks", "nodes": [{"name": "c1", "address": "127.0.9.1", "roles": ["cassandra"],
                                          "transport": "local"}],
            "cassandra": {"username": "u", "password": {"prefect_secret": "thb-test-es-password"}},
            "elasticsearch": {"url": "http://127.0.9.61:9200", "username": "elastic",
                              "password": {"prefect_secret": "thb-test-no-such-block"}},
            "repository": {"kind": "local", "path": str(tmp_path / "repo")}}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    stack = load_stack(path)  # loading reads no secret: a missing block is found when used
    assert stack.cassandra.password is not None and stack.elasticsearch and stack.elasticsearch.password
    secret = stack.cassandra.password.resolve()
    assert secret.get_secret_value() == "es-s3cr3t-value"
    assert "es-s3cr3t-value" not in repr(secret) + str(secret) + repr(stack) + stack.model_dump_json()
    with pytest.raises(SecretNotFound) as missing:
        stack.elasticsearch.password.resolve()
    assert str(missing.value).startswith("Prefect Secret block 'thb-test-no-such-block': ")
    assert "\n" not in str(missing.value)


@pytest.mark.timeout(2400)  # a full stop and start of the 3-node stack, twice on a shared CPU
def test_cancelling_a_cold_backup_while_services_are_stopped_ends_with_them_healthy(
        process_worker, real_stack, cluster3, tmp_path):
    import subprocess

    import yaml

    from tests.stack.cold import cold_stack, ensure_running, fingerprints, unhealthy

    block = f"thb-test-{cluster3.cluster_name.lower()}-password"
    prefect_ops.save_secret(block, cluster3.password)
    path, stack = cold_stack(real_stack, cluster3, tmp_path)
    path.write_text(yaml.safe_dump(prefect_ops.with_secret_blocks(
        yaml.safe_load(path.read_text()), {"cassandra": block}), sort_keys=False))
    root = Path(stack.repository.path)
    assert unhealthy(stack) == {}
    before = fingerprints(real_stack, cluster3)
    status = [str(n.service.status_script) for n in cluster3.nodes]
    try:
        run = prefect_ops.run_deployment_nowait("cold-backup/weekly-cold-backup", {"stack": str(path)})
        deadline = time.monotonic() + 600
        while all(subprocess.run([s]).returncode == 0 for s in status):  # until Cassandra is stopped
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run.id).state
            assert state and not state.is_final(), f"ended first: {state}{worker_log(process_worker)}"
            assert time.monotonic() < deadline, f"services never stopped{worker_log(process_worker)}"
            time.sleep(0.2)
        assert "thehive" in unhealthy(stack)  # stopped first, so everything is down
        t0 = time.monotonic()
        final, seconds = prefect_ops.cancel_and_wait(run.id, "test: cancelled while stopped", timeout=900)
        assert final.state.is_cancelled(), f"{final.state.name}: {final.state.message}{worker_log(process_worker)}"
        # The hook started everything; on a loaded machine a health check may still lag a little.
        deadline, left = time.monotonic() + 300, unhealthy(stack)
        while left and time.monotonic() < deadline:
            time.sleep(5)
            left = unhealthy(stack)
        assert left == {}, worker_log(process_worker)
        healthy_after = time.monotonic() - t0
        with open_repository(stack) as repo:
            assert all(r["status"] == "incomplete" for r in catalog(repo))
            holder = read_holder(repo, LOCK_KEY)
        assert holder is None, holder
        assert not list(root.glob("cold-*/manifest.json"))
        assert fingerprints(real_stack, cluster3) == before
        print(f"cold backup cancelled while stopped: Cancelled after {seconds:.0f}s, every service "
              f"healthy {healthy_after:.0f}s after the cancel")
    finally:
        ensure_running(stack)


@pytest.mark.timeout(1800)
def test_cancelling_a_running_restore_mid_load_then_the_same_restore_finishes(
        process_worker, real_stack, cluster3, seeded3, tmp_path):
    """A restore beside the live keyspace (sstableloader: a JVM per table), cancelled through the
    API once its journal says the live change has begun (loading); the same restore run again
    resumes and completes. TheHive's small seeded keyspace: the re-run is a whole restore."""
    from flows.hot_backup import hot_backup
    from tasks import rollback
    from tasks.staging import staging_root
    from tests.stack import seed
    from tests.stack.thehive_standin import get_status

    source, target = "thehive", "thehive_rc"
    path, stack = prefect_ops.secret_stack(real_stack, cluster3, tmp_path)
    backup_id = hot_backup(stack=str(path), components=["cassandra"], keyspaces=[source])["backup_id"]
    expected = seed.cluster_fingerprint(cluster3, source)
    params = {"stack": str(path), "backup_id": backup_id, "components": ["cassandra"], "keyspace": source,
              "target_keyspace": target, "cassandra_method": "sstableloader", "confirm": True}

    def staging_left() -> dict[str, bool]:
        found = {}
        for node in stack.nodes_with("cassandra"):
            with host_for(stack, node.name) as host:
                found[node.name] = host.run(["test", "-e", staging_root(stack, node.name, target)],
                                            timeout=60, check=False).exit_code == 0
        return found

    try:
        run = prefect_ops.run_deployment_nowait("restore/restore", params)
        deadline = time.monotonic() + 900
        while not ((j := rollback.read_journal(stack, target)) and j.snapshotted):  # loading from here
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run.id).state
            assert state and not state.is_final(), f"ended before loading: {state}{worker_log(process_worker)}"
            assert time.monotonic() < deadline, f"never reached the load{worker_log(process_worker)}"
            time.sleep(0.2)
        final, seconds = prefect_ops.cancel_and_wait(run.id, "test: restore cancelled mid-load")
        assert final.state.is_cancelled(), f"{final.state.name}: {final.state.message}{worker_log(process_worker)}"
        assert seconds < 120, f"cancellation took {seconds:.0f}s"
        with open_repository(stack) as repo:
            assert read_holder(repo, LOCK_KEY) is None
        assert staging_left() == {n.name: False for n in stack.nodes_with("cassandra")}, worker_log(process_worker)
        journal = rollback.read_journal(stack, target)  # what the re-run resumes from
        assert journal and journal.snapshotted and not journal.existed
        assert get_status(real_stack.standin_url)[0] == 200  # beside, Cassandra only: never stopped

        t0 = time.monotonic()
        again = prefect_ops.run_and_wait("restore/restore", params, timeout=1200)
        assert again.state.is_completed(), f"{again.state.message}{worker_log(process_worker)}"
        assert seed.cluster_fingerprint(cluster3, target) == expected  # every row compared
        assert seed.cluster_fingerprint(cluster3, source) == expected  # the live one untouched
        assert rollback.read_journal(stack, target) is None
        assert not any(staging_left().values())
        with open_repository(stack) as repo:
            assert read_holder(repo, LOCK_KEY) is None
        print(f"restore cancelled mid-load: Cancelled in {seconds:.1f}s; the re-run completed in "
              f"{time.monotonic() - t0:.0f}s, every row of {len(expected)} tables identical")
    finally:
        session = cluster3.session()
        try:
            session.execute(f"DROP KEYSPACE IF EXISTS {target}")
        finally:
            session.cluster.shutdown()
