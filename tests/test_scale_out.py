"""Scale-out on Prefect itself (issue 11): a hot backup whose nodes name work queues has each
node's tables archived by the node-backup deployment on that queue, by the worker polling it.

Two real process workers poll two queues of the pool (``dc-a``: nodes 1 and 2, ``dc-b``: node 3,
as two datacenters would); the hot backup runs here and dispatches. The Prefect API says which
queue ran which node's part; the backup verifies and every table of every node is in it.
"""
from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

from flows.hot_backup import hot_backup
from flows.verify import verify_backup
from tasks.manifest import read_manifest
from tasks.repositories import open_repository
from tests.stack import prefect_ops

pytestmark = pytest.mark.usefixtures("seeded3")

QUEUES = {"dc-a": ("n1", "n2"), "dc-b": ("n3",)}


@pytest.fixture(scope="module")
def dc_workers(deployed, tmp_path_factory):
    with get_client(sync_client=True) as client:
        for queue in QUEUES:
            try:
                client.create_work_queue(name=queue, work_pool_name=prefect_ops.POOL)
            except Exception:  # already there (a rerun on the same server)
                pass
    services = []
    try:
        for queue in QUEUES:
            service = prefect_ops.worker_service(tmp_path_factory.mktemp(f"worker-{queue}"), deployed,
                                                 name=f"worker-{queue}", queues=(queue,))
            services.append(service)
            prefect_ops.start_worker(service, deployed, name=f"worker-{queue}")
        yield services
    finally:
        for service in services:
            service.stop()


def test_each_nodes_part_runs_on_its_datacenters_queue(dc_workers, real_stack, cluster3, make_stack):
    queue_of = {node.name: q for q, suffixes in QUEUES.items() for node in cluster3.nodes
                if node.name.endswith(suffixes)}
    assert len(queue_of) == 3
    path, stack = make_stack("local", work_queues=queue_of)
    assert {n: stack.cassandra.settings_for(n).work_queue for n in queue_of} == queue_of

    backup_id = hot_backup(stack=str(path), components=["cassandra"])["backup_id"]

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["node-backup"])))
    ran = {r.parameters["node"]: r.work_queue_name for r in runs if r.parameters["backup_id"] == backup_id}
    assert ran == queue_of  # each node's part, once, on its datacenter's queue
    assert all(r.state and r.state.is_completed() for r in runs if r.parameters["backup_id"] == backup_id)
    with open_repository(stack) as repo:
        manifest = read_manifest(repo, backup_id)
        assert not list(repo.list(f"{backup_id}/dispatch/"))  # the hand-over objects are taken
    tables = {(o.node, o.table) for o in manifest.objects if o.table}
    assert {node for node, _ in tables} == set(queue_of)
    assert len(tables) == 3 * len({t for _, t in tables})  # every table of every node
    assert verify_backup(stack=str(path), backup_id=backup_id)["ok"]
