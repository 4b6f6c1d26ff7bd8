"""Restore: prove everything, stage everything, then replace — with a way back at every step.

1. **Check** (nothing touched; a refusal lists every problem): the request's names, every object
   (presence, size, SHA-256, archive members), the schema, the cluster (all UN), the replication
   against the live topology, the CQL run under a scratch keyspace name, free space on every node
   for staging and loading, the Elasticsearch snapshot. Without ``confirm`` it stops here.
   With it, the tables' objects are left to step 2, which reads them anyway.
2. **Stage**: every archive extracted into staging on its node, its bytes checked as they pass
   (SHA-256 and members; components by size and content name). A damaged object fails staging;
   the tables' objects are then all checked as in step 1 and the restore is refused naming each.
3. **Replace**: stop TheHive → per keyspace, a journal and an ``rb-`` snapshot of the live content
   (tasks/rollback.py) → drop, create, load from staging → Elasticsearch → attachments.
4. **Finish**: complete → the rollback snapshot and staging are removed and TheHive is started.
   A failure after the first live change → the previous content is put back (keyspace and index)
   and TheHive started on it; if even that fails, TheHive stays stopped and the message says what
   state the data is in and that the same command, run again, finishes the restore.

A restore killed at any point is finished by running it again with the same parameters: staging
resumes from its markers, and the journal keeps the pre-restore content from being replaced by a
snapshot of partial data.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from config.model import Elasticsearch as EsSettings
from config.model import LocalRepository, Stack
from flows.common import (
    ALL_COMPONENTS,
    Component,
    RestoreRefused,
    fan_out,
    raise_failures,
    resolve_stack,
)
from flows.lifecycle import start_in_order, stop_in_order
from flows.reports import restore_report
from flows.restore_plan import Plan, RestoreRequest, check, request_problems
from tasks import elasticsearch, es_repository, files, rollback, services, thehive
from tasks.cassandra_restore import (
    create_loader_role_task,
    drop_loader_role_task,
    load_staged_task,
    recreate_keyspace_task,
)
from tasks.lock import HeldLock, repository_lock
from tasks.manifest import ElasticsearchRecord
from tasks.ssh_pool import shared_ssh
from tasks.staging import StagedArchive, remove_staging, stage_task
from tasks.validate import check_objects

Method = Literal["auto", "import", "sstableloader"]
IndexStrategy = Literal["snapshot", "rebuild"]
#: Staging is bound by round trips to the node and by small archives; each load starts a JVM.
STAGES_PER_NODE = 4
TABLES_PER_NODE = 2


class RestoreFailed(RuntimeError):
    pass


def _after_interruption(flow, flow_run, state) -> None:
    """Crash/cancel hook: TheHive is started again only if nothing live was changed."""
    log = logging.getLogger("flows.restore")
    try:
        params = flow_run.parameters
        st = resolve_stack(params.get("stack", ""))
        targets = _requested_targets(st, params)
        touched = [t for t in targets if (j := rollback.read_journal(st, t)) and j.snapshotted]
        for t in targets:
            for node in st.nodes_with("cassandra"):
                remove_staging(st, node.name, t)
        if touched:
            log.error("restore interrupted after keyspace(s) %s were changed: TheHive is left stopped "
                      "(their previous content is kept in the rb- snapshot). Run the same restore "
                      "again to finish it.", ", ".join(touched))
            return
        if params.get("confirm") and st.service("thehive") is not None:
            if "elasticsearch" in params.get("components", ALL_COMPONENTS):
                thehive.clear_rebuild_flag(st)
            errors = start_in_order(st, [], only=["thehive"], plain=True)
            if errors:
                raise services.ServiceError("; ".join(errors))
            log.info("restore interrupted before any live change: TheHive started again")
    except Exception as exc:  # a hook must not raise; say what is left to do
        log.error("restore interrupted; the clean-up hook failed too: %s. Run the same restore "
                  "again to finish it.", exc)


def _requested_targets(st: Stack, params: dict) -> list[str]:
    if params.get("target_keyspace"):
        return [params["target_keyspace"].lower()]
    if params.get("keyspace"):
        return [params["keyspace"].lower()]
    return [k.lower() for k in st.cassandra.keyspaces]


@flow(name="restore", task_runner=ThreadPoolTaskRunner(max_workers=8),  # type: ignore[arg-type]
      on_crashed=[_after_interruption], on_cancellation=[_after_interruption])
def restore(
    stack: str = "",
    backup_id: str = "latest",
    components: list[Component] = ALL_COMPONENTS,
    keyspace: str | None = None,
    target_keyspace: str | None = None,
    cassandra_method: Method = "auto",
    index_strategy: IndexStrategy = "snapshot",
    verify_checksums: bool = True,
    mirror_files: bool = False,
    reference_backup: str = "",
    reference_date: str = "",
    allow_partial: bool = False,
    confirm: bool = False,
) -> dict:
    """Restore a backup onto the stack.

    Args:
        stack: the stack file's path; empty: $THEHIVE_BACKUP_STACK, else the Prefect Variable
            thehive-backup-stack.
        backup_id: the backup to restore, or "latest" (the newest complete one).
        components: what to restore: cassandra, elasticsearch, files.
        keyspace: the backed-up keyspace to restore (default: the only one, or each of them).
        target_keyspace: restore under another name, beside the live keyspace.
        cassandra_method: import (same topology), sstableloader (any), or auto.
        index_strategy: snapshot (restore the ES snapshot) or rebuild (TheHive rebuilds it).
        verify_checksums: re-hash every object before acting (only turn off knowingly).
        mirror_files: delete attachments that are not in the backup.
        reference_backup: instead of a backup of ours, what the reference guide's script made:
            its ``archive_backup`` root (every host), one host's folder or one date folder
            (``<keyspace>/<table>.tbz``); restored with sstableloader. Only the keyspaces asked
            for (``keyspace``, default: the stack's) are read; system keyspaces and empty
            archives are skipped, with a line each in the plan. Host folders are matched to the
            stack's Cassandra nodes by name, address or first DNS label (tasks/reference.py).
        reference_date: the date folder of ``reference_backup`` to restore (default: the newest).
        allow_partial: restore a reference backup even when hosts' archives are missing so that
            some rows have no copy in it (default: refused, naming the missing hosts).
        confirm: without it nothing is changed: the plan is shown (a dry run).
    """
    t0 = time.monotonic()
    request = RestoreRequest(backup_id, list(dict.fromkeys(components)), keyspace, target_keyspace,
                             cassandra_method, index_strategy, verify_checksums, mirror_files,
                             reference_backup, reference_date, allow_partial)
    problems = request_problems(request)
    if problems:
        raise RestoreRefused(backup_id, problems)
    st = resolve_stack(stack)
    # Held from validation to the end, so nothing changes the repository in between.
    with repository_lock(st, f"restore {backup_id}") if confirm else nullcontext() as held, shared_ssh():
        plan = check(st, request, staging_proves=confirm)
        if not confirm:
            return _dry_run(plan)
        if reference_backup:
            st = st.model_copy(update={"repository": LocalRepository(kind="local", path=reference_backup)})
        assert held is not None  # confirm: the lock is held
        return _act(st, plan, t0, held)


def _dry_run(plan: Plan) -> dict:
    summary = plan.summary()
    create_markdown_artifact("# Restore plan (dry run: nothing changed)\n\n"
                             + "".join(f"- {k}: {v}\n" for k, v in summary.items())
                             + "\nRun again with `confirm=True` to restore.", key="restore-plan")
    get_run_logger().info("dry run, nothing changed: %s", summary)
    return {"dry_run": True, **summary}


# -- 2-4. stage, replace, finish ----------------------------------------------------------------

def _act(st: Stack, plan: Plan, t0: float, held: HeldLock) -> dict:
    logger = get_run_logger()
    report: dict = {"plan": plan.summary()}
    try:
        report["staged"], sstables = _stage(st, plan)
    except Exception as exc:
        # Staging proves the tables' objects as it reads them: a damaged one fails it. Read them
        # all now, to refuse naming every damaged object (nothing live was changed).
        damaged = check_objects(st, plan.proved_by_staging) if plan.proved_by_staging else []
        _remove_staging(st, plan, logger)
        if damaged:
            raise RestoreRefused(plan.backup_id, damaged) from exc
        unfinished = [t for t in plan.targets.values()
                      if (j := rollback.read_journal(st, t)) and j.snapshotted]
        state = (f"keyspace(s) {', '.join(unfinished)} are still as an earlier interrupted restore "
                 "left them (their previous content is kept in the rb- snapshot); run the same "
                 "restore again" if unfinished else "nothing live was changed")
        raise RestoreFailed(f"restore of {plan.backup_id}: staging failed, {state}:\n- {exc}") from exc

    held.check()  # still ours: the first live change comes next
    thehive_svc = st.service("thehive")
    beside = all(src != dst for src, dst in plan.targets.items())
    touch_thehive = thehive_svc is not None and not (beside and plan.components == ["cassandra"])
    changed: list[str] = []  # what has been changed live, for the way back
    events: list[dict] = []  # TheHive's stop and start
    previous_index = None
    error: Exception | None = None
    try:
        if touch_thehive:
            stop_in_order(st, events, only=["thehive"])
        if plan.targets:
            report["cassandra"] = {}
            for ks, target in plan.targets.items():
                changed.append(f"keyspace:{target}")
                report["cassandra"][target] = _replace_keyspace(st, plan, ks, target, sstables)
        if "elasticsearch" in plan.components:
            if plan.index_strategy == "snapshot":
                if plan.es_put_back:  # before keep_previous writes into the empty repository
                    report["elasticsearch_put_back"] = es_repository.put_back_task(
                        st, plan.manifest.elasticsearch)
                previous_index = elasticsearch.keep_previous_task(st.elasticsearch)
                changed.append("index")
                report["elasticsearch"] = elasticsearch.restore_snapshot_task(
                    st.elasticsearch, plan.manifest.elasticsearch)
            else:
                thehive.set_rebuild_flag(st)
                report["elasticsearch"] = {"rebuild": "TheHive rebuilds the index at its next start"}
        if "files" in plan.components:
            report["files"] = files.restore_attachments_task(st, plan.manifest.files, plan.objects,
                                                             plan.mirror_files)
    except Exception as exc:
        error = exc
        logger.error("restore of %s failed: %s", plan.backup_id, exc)

    if error is None:
        outcome = "complete"
        with ThreadPoolExecutor(max_workers=1) as pool:  # two removals on the nodes, at once
            staging_removed = pool.submit(_remove_staging, st, plan, logger)
            _discard_way_back(st, plan, changed)
            staging_removed.result()
    else:
        outcome = _roll_back(st, plan, changed, previous_index)
        _remove_staging(st, plan, logger)
    report["outcome"] = outcome
    if touch_thehive:
        report["thehive"] = _start_thehive(st, plan, outcome, events)
    report["seconds"] = round(time.monotonic() - t0, 1)
    restore_report(report, error)
    if error is not None:
        raise RestoreFailed(f"restore of {plan.backup_id} failed: {error}\n{outcome}; "
                            f"TheHive: {report.get('thehive', 'not touched')}")
    if report.get("thehive", "healthy") != "healthy":
        raise RestoreFailed(f"restore of {plan.backup_id} complete, but TheHive: {report['thehive']}")
    logger.info("restore of %s complete in %.1fs", plan.backup_id, report["seconds"])
    return report


def _stage(st: Stack, plan: Plan) -> tuple[dict, dict[tuple[str, str], int]]:
    """Every archive staged on its node; returns the summary and the SSTables staged per
    (node, archive key), which the load uses instead of counting them again."""
    queues = by_node_biggest_first([s for archives in plan.staged.values() for s in archives])
    total = sum(len(q) for q in queues.values())
    futures = fan_out(queues, lambda node, s: stage_task.submit(st, s), STAGES_PER_NODE, lambda f: None)
    results = raise_failures(futures, total, "archive(s) not staged")
    return ({"archives": total, "resumed": sum(1 for r in results if r["resumed"])},
            {(r["node"], r["key"]): r["sstables"] for r in results})


def by_node_biggest_first(archives: list[StagedArchive]) -> dict[str, list[StagedArchive]]:
    """One queue per node, the biggest archive first: the longest steps start first, so that
    the last ones to end are short."""
    queues: dict[str, list[StagedArchive]] = {}
    for s in sorted(archives, key=lambda s: -(s.archive.raw_size or s.archive.size)):
        queues.setdefault(s.node, []).append(s)
    return queues


def _replace_keyspace(st: Stack, plan: Plan, source: str, target: str,
                      sstables: dict[tuple[str, str], int]) -> dict:
    """Journal and snapshot of the live content first; then drop, create and load."""
    journal = rollback.read_journal(st, target)
    if journal is None or not journal.snapshotted:
        journal = rollback.describe_live(st, target, plan.backup_id)
        rollback.write_journal(st, journal)
        if journal.existed:
            nodes = [n.name for n in st.nodes_with("cassandra")]
            snaps = [rollback.snapshot_node_task.submit(st, n, target) for n in nodes]
            raise_failures(snaps, len(nodes), "rollback snapshot(s) failed")
        journal.snapshotted = True  # from here on the live content may change
        rollback.write_journal(st, journal)
    else:
        get_run_logger().info("resuming an unfinished restore into %s: its previous content is "
                              "kept in snapshot %s", target, rollback.rollback_tag(target))
    recorded = plan.manifest.cassandra
    if recorded is None or source not in recorded.keyspaces:
        raise RestoreFailed(f"backup {plan.backup_id} holds no keyspace {source}")
    schema = recreate_keyspace_task(st, recorded.keyspaces[source].schema_cql,
                                    source, target)
    credentials = create_loader_role_task(st, target) if plan.method == "sstableloader" else None
    try:
        queues = by_node_biggest_first(plan.staged[source])
        futures = fan_out(queues, lambda node, s: load_staged_task.submit(
            st, s, plan.method, credentials, sstables.get((s.node, s.archive.key))),
                          TABLES_PER_NODE, lambda f: None)
        loads = raise_failures(futures, len(plan.staged[source]), f"table load(s) failed in {target}")
    finally:
        drop_loader_role_task(st, credentials)
    return {"method": plan.method, "archives": len(loads),
            "empty_archives": sum(1 for r in loads if r["empty"]), **schema}


def _discard_way_back(st: Stack, plan: Plan, changed: list[str]) -> None:
    for target in plan.targets.values():
        rollback.discard(st, target)
    if "index" in changed:
        elasticsearch.forget_previous(_es(st))


def _es(st: Stack) -> EsSettings:
    """The stack's Elasticsearch settings, present whenever the index was changed."""
    if st.elasticsearch is None:
        raise RestoreFailed("the stack has no elasticsearch section")
    return st.elasticsearch


def _roll_back(st: Stack, plan: Plan, changed: list[str],
               previous_index: ElasticsearchRecord | None) -> str:
    """Put back what was changed; say exactly what state the data is in."""
    logger = get_run_logger()
    if not changed:
        return "nothing live was changed"
    done, failed = [], []
    for what in changed:
        try:
            if what.startswith("keyspace:"):
                target = what.split(":", 1)[1]
                journal = rollback.read_journal(st, target)
                if journal is None:
                    raise RestoreFailed(f"no rollback journal for {target}")
                rollback.recreate_previous(st, journal)
                nodes = [n.name for n in st.nodes_with("cassandra")]
                futures = [rollback.put_back_node_task.submit(st, n, target) for n in nodes]
                raise_failures(futures, len(nodes), f"rollback import(s) failed in {target}")
                rollback.discard(st, target)
                done.append(f"keyspace {target} as before" if journal.existed
                            else f"keyspace {target} removed (it did not exist before)")
            elif what == "index" and previous_index:
                elasticsearch.restore_snapshot(_es(st), previous_index)
                elasticsearch.forget_previous(_es(st))
                done.append("index as before")
        except Exception as exc:
            logger.error("rollback of %s failed: %s", what, exc)
            failed.append(f"{what}: {exc}")
    if "elasticsearch" in plan.components and plan.index_strategy == "rebuild":
        thehive.clear_rebuild_flag(st)
    if failed:
        return ("ROLLBACK INCOMPLETE (" + "; ".join(failed) + "); rolled back: "
                + (", ".join(done) or "nothing") + ". The previous content is kept in the rb- "
                "snapshot(s); run the same restore again to finish it")
    return "rolled back: " + ", ".join(done)


def _start_thehive(st: Stack, plan: Plan, outcome: str, events: list[dict]) -> str:
    """Only on complete data: a finished restore, a finished rollback, or nothing changed."""
    if outcome.startswith("ROLLBACK INCOMPLETE"):
        return "left stopped: the data is not complete"
    try:
        errors = start_in_order(st, events, only=["thehive"])
        return "healthy" if not errors else "NOT healthy: " + "; ".join(errors)
    except Exception as exc:
        return f"NOT healthy: {exc}"
    finally:
        if "elasticsearch" in plan.components and plan.index_strategy == "rebuild":
            thehive.clear_rebuild_flag(st)


def _remove_staging(st: Stack, plan: Plan, logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
    """Every target's staging on every node, all at once; a failure is only logged."""
    log = logger or get_run_logger()
    jobs = [(node.name, target) for target in plan.targets.values() for node in st.nodes_with("cassandra")]

    def remove(job: tuple[str, str]) -> None:
        try:
            remove_staging(st, *job)
        except Exception as exc:
            log.warning("staging on %s not removed: %s", job[0], exc)

    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        list(pool.map(remove, jobs))
