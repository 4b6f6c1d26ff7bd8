"""Node rebuild: one Cassandra node back from a hot backup of its own, system keyspaces included
(the guide's "Rebuild an existing node"), while the other nodes keep serving.

Order: lock → backup chosen (newest complete one with the node's system keyspaces) → that node's
archives validated (tasks/validate.py) → dry run ends here unless ``confirm`` → the node stopped
(drained first when it runs; flows/lifecycle.py) → its data, commitlog, hints and saved_caches
folders moved aside under a journal → every table archive unpacked into its table folder (the
backed-up folder name, hence table id) → owner set, no commitlog left → started → UN, CQL, "Startup
complete" in its log, its backed-up host id, a read at LOCAL_ONE of every table → journals removed.
Any failure after the first move puts the folders back and starts the node as it was. A rerun after
a crash finds the journals and finishes. The moved-aside folders are kept; the report names them.
"""
from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from config.model import Stack
from flows.common import RestoreRefused, fan_out, raise_failures, resolve_stack
from flows.lifecycle import stop_in_order
from tasks import rebuild, rebuild_plan, services
from tasks.lock import repository_lock
from tasks.manifest import Manifest, ObjectEntry, utcnow
from tasks.repositories import open_repository
from tasks.restore_folders import Journal, put_back_task, remove_journal
from tasks.ssh_pool import shared_ssh
from tasks.validate import check_objects_task


class RebuildFailed(RuntimeError):
    """The node did not come back from the backup; the message says what was put back."""


@flow(name="node-rebuild")
def node_rebuild(stack: str = "", node: str = "", backup_id: str = "latest", confirm: bool = False,
                 repair: bool = False) -> dict:
    """Rebuild one Cassandra node from a hot backup holding its system keyspaces.

    Args:
        stack: the stack file's path; empty: $THEHIVE_BACKUP_STACK, else the Prefect Variable.
        node: the Cassandra node to rebuild (its name in the stack file).
        backup_id: 'latest': the newest complete backup with this node's system keyspaces.
        confirm: false (default): validate and show the plan, change nothing.
        repair: run `nodetool repair --full` on the node afterwards when it is advisable.
    """
    log = get_run_logger()
    st = resolve_stack(stack)
    if node not in {n.name for n in st.nodes_with("cassandra")}:
        raise ValueError(f"{node!r} is not a Cassandra node of stack {st.name!r}")
    settings = st.cassandra.settings_for(node)
    folders = rebuild_plan.node_folders(settings)
    with repository_lock(st, f"node-rebuild {node}"), shared_ssh():
        with open_repository(st) as repo:
            manifest = rebuild_plan.choose_backup(repo, node, backup_id)
        bid = manifest.backup_id
        objects = rebuild_plan.node_objects(manifest, node)
        problems = rebuild_plan.problems(manifest, node, st.node(node).address)
        problems += check_objects_task(st, manifest.model_copy(update={"objects": objects}))
        if problems:
            raise RestoreRefused(bid, problems, what=f"rebuild of {node}")
        plan = {"backup_id": bid, "node": node, "backup_finished": manifest.finished_at,
                "objects": len(objects), "bytes": sum(o.size for o in objects),
                "system_keyspaces": rebuild_plan.system_keyspaces_of(manifest, node),
                "folders": {f.role: f.path for f in folders}}
        if not confirm:
            log.info("dry run: %s would be rebuilt from %s (%d archives); nothing changed", node, bid,
                     len(objects))
            return {**plan, "dry_run": True}
        t0 = time.monotonic()
        result = _rebuild(st, node, manifest, objects, folders)
    advisable, advice = rebuild_plan.repair_advice(node, rebuild.live_replication(st, node),
                                                   manifest.finished_at)
    repaired = None
    if repair and advisable:
        repaired = rebuild.repair_task(st, node)
    report = {**plan, **result, "dry_run": False, "repair_advisable": advisable, "repair_advice": advice,
              "repaired": repaired is not None, "seconds": round(time.monotonic() - t0, 1)}
    create_markdown_artifact(
        f"# Node {node} rebuilt from {bid}\n\n- host id {result['host_id']}, {len(objects)} archives\n"
        f"- previous folders kept: {', '.join(result['aside']) or 'none'} (remove them once satisfied)\n"
        f"- repair: {advice}{' (done)' if repaired is not None else ''}\n", key="node-rebuild")
    log.info("%s rebuilt from %s in %.1fs; %s", node, bid, report["seconds"], advice)
    return report


def _rebuild(st: Stack, node: str, manifest: Manifest, objects: list[ObjectEntry],
             folders: list[rebuild_plan.NodeFolder]) -> dict:
    log = get_run_logger()
    key = rebuild.unfinished_key(st, node, folders)
    if key:
        log.warning("%s: finishing the unfinished rebuild %s", node, key)
    key = key or rebuild.new_key()
    journals = rebuild.plan_folders(st, node, folders, key)
    events: list[dict] = []
    timings: dict[str, float] = {}
    t = [time.monotonic()]

    def lap(step: str) -> None:
        now = time.monotonic()
        timings[step] = round(now - t[0], 1)
        t[0] = now

    stop_in_order(st, events, only=["cassandra"], nodes=[node])  # drained first when it runs
    rebuild.ensure_stopped(st, node)
    lap("stop")
    started_at = utcnow()
    try:
        for i, j in enumerate(journals):
            journals[i] = rebuild.move_aside_task(st, j)
        owner = rebuild.owner_for(st, node, journals)
        for j in journals:
            rebuild.reset_folder_task(st, j, owner)
        lap("move_aside")
        rebuild.make_table_folders_task(st, node, objects)
        futures = fan_out({node: objects}, lambda n, o: rebuild.unpack_table_task.submit(st, n, o), 4,
                          lambda _f: None)
        files = sum(raise_failures(futures, len(objects), "table archive(s) not unpacked", rebuild.RebuildError))
        rebuild.drop_snapshot_extras_task(st, node)
        rebuild.give_to_owner_task(st, node, [j.path for j in journals], owner)
        if left := rebuild.commitlog_files(st, node):
            raise rebuild.RebuildError(f"{node}: commitlog files remain: {left[:5]}")
        lap("unpack")
        offset = rebuild.log_size(st, node)
        events += services.start_node_task(st, "cassandra", node)
        start_timeout = (st.service("cassandra") or _no_service()).start_timeout
        logged = rebuild.wait_startup_complete(st, node, offset, start_timeout)
        lap("start")
        host_id = next((n.host_id for n in manifest.cassandra.nodes if n.name == node), None) \
            if manifest.cassandra else None
        user_tables = {ks: list(r.tables) for ks, r in (manifest.cassandra.keyspaces.items()
                                                         if manifest.cassandra else [])}
        checked = rebuild.check_node(st, node, host_id, user_tables)
        lap("check")
    except BaseException as exc:
        notes = _put_back(st, node, journals)
        raise RebuildFailed(f"rebuild of {node} from {manifest.backup_id} failed: {exc}\nput back:\n- "
                            + "\n- ".join(notes)) from exc
    for j in journals:
        remove_journal(st, j)
    return {"key": key, "started_at": started_at, "files": files, "host_id": checked["host_id"],
            "reads": checked["reads"], "startup_complete_logged": logged,
            "aside": [j.aside for j in journals if j.aside], "events": events, "timings": timings}


def _no_service() -> services.Service:
    raise services.ServiceError("the stack declares no cassandra service")


def _put_back(st: Stack, node: str, journals: list[Journal]) -> list[str]:
    """Stop the node, put every folder back from its journal, start it as it was; what was done."""
    notes: list[str] = []
    try:
        services.stop_node_task(st, "cassandra", node)
        notes.append(f"{node}: cassandra stopped")
    except Exception as exc:
        notes.append(f"stop FAILED: {exc}")
    for j in reversed(journals):
        try:
            notes.append(put_back_task(st, j))
        except Exception as exc:
            notes.append(f"put back {j.node}:{j.path} FAILED: {exc} (its journal {j.where} says what to do)")
    try:
        services.start_node_task(st, "cassandra", node)
        notes.append(f"{node}: started as it was")
    except Exception as exc:
        notes.append(f"start FAILED: {exc}")
    return notes
