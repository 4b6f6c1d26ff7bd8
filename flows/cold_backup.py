"""Cold backup: stop the stack in order, copy every folder, start it again — always.

Order: preflight (nothing touched on failure) → hooks ``before_stop`` → stop TheHive, then
Elasticsearch, then Cassandra (``nodetool drain`` first), each waited until really stopped, in
parallel over the nodes of one service → hooks ``after_stop`` → every folder of every service and
node streamed into the repository (tar + inventory) → start Cassandra (all UN), Elasticsearch
(yellow/green), TheHive (health URL) **whatever happened before** (try/finally here; Prefect
cancellation and crash hooks when the flow itself is torn down) → hooks ``after_start`` →
manifest last. The copy result and the restart result are reported separately.

The folders come from the stack file (plus what a consistent backup cannot do without, see
``tasks.folders.declared_paths``); stopping and starting is flows/lifecycle.py::

    services:
      - name: cassandra
        nodes: [hive1, hive2, hive3]          # the first one (a seed) is started alone, first
        manager: {kind: systemd, unit: cassandra, sudo: true}
        paths:
          - {name: config, path: /etc/cassandra}
          - {name: data, path: /var/lib/cassandra}
          - {name: logs, path: /var/log/cassandra}
    hooks:
      after_stop:
        - {node: hive1, argv: [python3, /opt/ebs_snapshot.py, snapshot, --backup-id, "{backup_id}",
                              --tag-only]}
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from config.model import Stack
from flows.common import fan_out, mib, raise_failures, resolve_stack
from flows.lifecycle import run_hooks, start_all, start_in_order, stop_in_order
from flows.reports import cold_backup_failure_report, cold_backup_report, downtime
from tasks import folders, layout
from tasks.archive import Compression
from tasks.folders import PathSpec
from tasks.layout import new_backup_id
from tasks.lock import repository_lock
from tasks.manifest import Manifest, ObjectEntry, utcnow, write_manifest
from tasks.preflight import PreflightFailed, check_nodes_reachable, check_repository
from tasks.repositories import open_repository
from tasks.ssh_pool import shared_ssh


class ColdBackupFailed(RuntimeError):
    pass


def _restart_after_abort(flow, flow_run, state) -> None:
    """Cancellation/crash hook: the stack is never left stopped, nor the repository locked.

    A run cancelled while services are stopped is killed during its own restart; the hook runs
    after its process is gone, so taking the lock here breaks the run's (stale) lock at once and
    releasing it leaves the repository free for the next run.
    """
    try:
        stack = resolve_stack(flow_run.parameters.get("stack", ""))
    except Exception:
        return
    _, errors = start_all(stack)
    if errors:
        logging.getLogger(__name__).error("restart after the abort: %s", "; ".join(errors))
    try:
        with repository_lock(stack, "cold-backup hook: release the lock", record_flow_run=False):
            pass
    except Exception as exc:  # another live run holds it, or the repository is unreachable
        logging.getLogger(__name__).warning("repository lock not released by the hook: %s", exc)


# -- the flow --------------------------------------------------------------------------------------
@flow(name="cold-backup", task_runner=ThreadPoolTaskRunner(max_workers=16),  # type: ignore[arg-type]
      on_cancellation=[_restart_after_abort], on_crashed=[_restart_after_abort])
def cold_backup(
    stack: str = "",
    compression: Compression = "zstd",
    folders_per_node: int = 2,
    label: str = "",
) -> dict:
    """Stop the stack, copy every service folder of every node, start it again.

    Args:
        stack: the stack file's path; empty: $THEHIVE_BACKUP_STACK, else the Prefect Variable
            thehive-backup-stack.
        compression: zstd (default), gzip, bzip2 or none.
        folders_per_node: folders streamed at once from each node.
        label: free text stored in the manifest.
    """
    logger = get_run_logger()
    st = resolve_stack(stack)
    if folders_per_node < 1:
        raise ValueError("folders_per_node must be at least 1")
    backup_id = new_backup_id("cold")
    started_at, t0 = utcnow(), time.monotonic()
    specs, notes = folders.declared_paths(st)
    logger.info("cold backup %s of stack %s: %d folders", backup_id, st.name, len(specs))

    with repository_lock(st, f"cold-backup {backup_id}"), shared_ssh():
        return _cold_backup(ColdBackupRun(st, backup_id, specs, notes, compression,
                                          folders_per_node, label, started_at, t0))


@dataclass(frozen=True)
class ColdBackupRun:
    """One run's settled parameters, handed to its body as one value."""

    st: Stack
    backup_id: str
    specs: list[PathSpec]
    notes: list[str]
    compression: Compression
    folders_per_node: int
    label: str
    started_at: str
    t0: float


def _cold_backup(run: ColdBackupRun) -> dict:
    logger = get_run_logger()
    st, backup_id, specs, notes = run.st, run.backup_id, run.specs, run.notes
    sizes = _preflight(st, specs)
    events: list[dict] = []
    errors = run_hooks(st, "before_stop", backup_id, events)
    if errors:  # nothing stopped yet
        raise ColdBackupFailed(f"cold backup {backup_id}: nothing stopped, " + "; ".join(errors))

    objects: list[ObjectEntry] = []
    copy_error: str | None = None
    timings: dict[str, float] = {}
    try:
        t = time.monotonic()
        stop_in_order(st, events)
        timings["stop"] = round(time.monotonic() - t, 2)
        hook_errors = run_hooks(st, "after_stop", backup_id, events)
        if hook_errors:
            raise ColdBackupFailed("; ".join(hook_errors))
        t = time.monotonic()
        objects = _copy(st, specs, backup_id, run.compression, run.folders_per_node, events)
        timings["copy"] = round(time.monotonic() - t, 2)
    except Exception as exc:
        copy_error = f"{type(exc).__name__}: {exc}"
        logger.error("cold backup %s: %s; starting the stack again", backup_id, copy_error)
    finally:
        t = time.monotonic()
        restart_errors = run_hooks(st, "before_start", backup_id, events)
        restart_errors += start_in_order(st, events)
        timings["start"] = round(time.monotonic() - t, 2)
    restart_errors += run_hooks(st, "after_start", backup_id, events)
    down = downtime(events)
    restart = "ok" if not restart_errors else "FAILED: " + "; ".join(restart_errors)
    events.sort(key=lambda e: e["t"])

    with open_repository(st) as repo:
        if copy_error:
            leftovers = sorted(o.key for o in repo.list(layout.backup_prefix(backup_id)))
            cold_backup_failure_report(backup_id, copy_error, restart, down, leftovers)
            raise ColdBackupFailed(
                f"cold backup {backup_id} failed, no manifest written.\n- copy: {copy_error}\n"
                f"- restart: {restart}")
        timings["downtime"] = down or 0.0
        timings["total"] = round(time.monotonic() - run.t0, 2)
        components = sorted({folders.COMPONENT[s.service] for s in specs})
        attachments = next((o for o in objects if o.name == "attachments" and o.role == "archive"), None)
        manifest = Manifest(
            backup_id=backup_id, kind="cold", stack=st.name, label=run.label, started_at=run.started_at,
            finished_at=utcnow(), components=components, objects=objects, timings=timings,
            files=({"kind": "folder", "node": attachments.node, "path": attachments.path,
                    "count": attachments.files, "bytes": attachments.bytes,
                    "inventory_key": attachments.inventory_key} if attachments else None),
            cold={"folders": [dict(asdict(s), bytes_measured=sizes[s]) for s in specs],
                  "notes": notes, "restart": restart, "downtime_seconds": down, "events": events},
        )
        write_manifest(repo, manifest)
    cold_backup_report(manifest, restart, down, events)
    if restart_errors:
        raise ColdBackupFailed(f"cold backup {backup_id} is complete (manifest written) but the "
                               f"restart failed: {restart}")
    logger.info("cold backup %s complete: %d objects, %.1f MiB, downtime %.1fs", backup_id,
                len(objects), mib(manifest.size), down or 0)
    return {"backup_id": backup_id, "objects": len(objects), "bytes": manifest.size,
            "downtime": down, "restart": restart, "events": events, "repository": repo.url,
            "notes": notes}


def _preflight(st: Stack, specs: list[PathSpec]) -> dict[PathSpec, int]:
    """Nodes reachable, every folder present (and measured), repository writable with room."""
    problems: list[str] = []
    check_nodes_reachable(st, problems)
    if not st.services:
        problems.append("the stack declares no services: nothing to stop")
    if not specs:
        problems.append("no folder to copy: declare services[].paths")
    sizes: dict[PathSpec, int] = {}
    if not problems:
        futures = {s: folders.measure_task.submit(st, s) for s in specs}
        for spec, future in futures.items():
            future.wait()
            if future.state.is_completed():
                sizes[spec] = future.result()
            else:
                problems.append(future.state.message or f"{spec.node}:{spec.path} cannot be measured")
    with open_repository(st) as repo:
        check_repository(st, repo, sum(sizes.values()), problems)
    if problems:
        raise PreflightFailed(problems)
    return sizes


def _copy(st: Stack, specs: list[PathSpec], backup_id: str, compression: Compression,
          per_node: int, events: list[dict]) -> list[ObjectEntry]:
    queues: dict[str, list[PathSpec]] = {}
    for spec in specs:
        queues.setdefault(spec.node, []).append(spec)
    futures = fan_out(
        queues, lambda node, spec: folders.copy_path_task.submit(st, spec, backup_id, compression),
        per_node, lambda f: None)
    objects: list[ObjectEntry] = []
    for entries, evs in raise_failures(futures, len(specs), "folder copy(ies) failed", ColdBackupFailed):
        objects += entries
        events += evs
    return objects


