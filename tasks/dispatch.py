"""A hot backup's per-node part run by a Prefect worker near the node (issue 11, scale-out).

A node whose settings name a ``work_queue`` (its datacenter's) has its tables archived by the
``node-backup`` deployment (flows/node_backup.py) on that queue, instead of by the hot backup's own
process. The two sides share one store, the repository: the node's part writes the manifest
entries of what it stored to ``<backup-id>/dispatch/<node>.json``, and the hot backup takes them
(reads and deletes) before it writes the manifest. A flow run's own return value would need result
storage reachable from both machines; the repository already is.
"""
from __future__ import annotations

import json
from typing import Any, cast

from prefect.client.schemas.objects import FlowRun

from config.model import Stack
from tasks.manifest import ObjectEntry
from tasks.repositories import Repository, open_repository
from tasks.retry import side_effect_task


class DispatchFailed(RuntimeError):
    pass


def result_key(backup_id: str, node: str) -> str:
    return f"{backup_id}/dispatch/{node}.json"


def put_entries(repo: Repository, backup_id: str, node: str, entries: list[ObjectEntry]) -> None:
    data = [e.model_dump(mode="json", exclude_none=True) for e in entries]
    repo.put_bytes(result_key(backup_id, node), json.dumps(data).encode())


def take_entries(repo: Repository, backup_id: str, node: str) -> list[ObjectEntry]:
    key = result_key(backup_id, node)
    entries = [ObjectEntry.model_validate(d) for d in json.loads(repo.get_bytes(key))]
    repo.delete(key)
    return entries


def run_node_part(deployment: str, work_queue: str, node: str, parameters: dict[str, Any]) -> str:
    """Run ``deployment`` on ``work_queue`` and wait for it; its flow run's name, or raise."""
    from prefect.deployments import run_deployment

    run = cast(FlowRun, run_deployment(  # called from sync code: a FlowRun, not a coroutine
        name=deployment, parameters=parameters, work_queue_name=work_queue,
        timeout=None))  # None: wait until the run ends, however long
    state = run.state
    if state is None or not state.is_completed():
        raise DispatchFailed(f"{node}: {deployment} on work queue {work_queue!r} ended "
                             f"{state.name if state else 'without a state'}: {state.message if state else ''}")
    return run.name


@side_effect_task(name="node part", task_run_name="node part {node} on {work_queue}", retry=False)
def dispatch_node_task(st: Stack, node: str, work_queue: str, parameters: dict[str, Any]) -> list[ObjectEntry]:
    """Archive ``node``'s tables through the node-backup deployment on ``work_queue``; its entries.
    Not retried: the node's part retries its own table archives."""
    from prefect import get_run_logger

    name = run_node_part(st.cassandra.node_backup_deployment, work_queue, node, parameters)
    get_run_logger().info("node %s: archived by flow run %s on work queue %s", node, name, work_queue)
    with open_repository(st) as repo:
        return take_entries(repo, parameters["backup_id"], node)
