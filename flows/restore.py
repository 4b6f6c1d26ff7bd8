"""Restore: prove the backup, then put back the keyspace, the index and the attachments.

Order: validate everything (objects, checksums, archive members, schema, ES snapshot, cluster up)
→ without ``confirm`` stop here and show the plan → stop TheHive → Cassandra (drop, create, load
per node in parallel) → Elasticsearch (snapshot restore, or an index rebuild by TheHive) →
attachments → start TheHive and wait until healthy, whatever happened.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from config.model import LocalRepository, Stack, cql_identifier
from flows.catalog import latest_complete
from flows.common import ALL_COMPONENTS, Component, RestoreRefused, fan_out, resolve_stack
from tasks import cassandra, elasticsearch, files, services, thehive
from tasks.cassandra_restore import (
    choose_method, create_loader_role, drop_loader_role, load_archive_task, plan_import, plan_loader,
    recreate_keyspace,
)
from tasks.hosts import host_for
from tasks.lock import repository_lock
from tasks.manifest import Manifest, read_manifest
from tasks.reference import load_reference_task
from tasks.repositories import open_repository
from tasks.validate import check_objects_task, check_schema

Method = Literal["auto", "import", "sstableloader"]
IndexStrategy = Literal["snapshot", "rebuild"]


class RestoreFailed(RuntimeError):
    pass


def current_topology(stack: Stack) -> dict:
    with cassandra.cql_session(stack) as session:
        return cassandra.topology(session)


def cluster_problems(stack: Stack) -> list[str]:
    problems = []
    expected = {n.address for n in stack.nodes_with("cassandra")}
    for node in stack.nodes_with("cassandra"):
        try:
            with host_for(stack, node) as host:
                states = cassandra.node_states(host, stack.cassandra.settings_for(node.name))
        except Exception as exc:
            problems.append(f"{node.name}: {exc}")
            continue
        bad = sorted(a for a in expected if states.get(a) != "UN")
        if bad:
            problems.append(f"{node.name}: nodetool status shows not UN: {', '.join(bad)}")
    return problems


@flow(name="restore", task_runner=ThreadPoolTaskRunner(max_workers=8))
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
        stack: path of the stack file (empty: the local sandbox).
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
    st = resolve_stack(stack)
    # Held from validation to the end, so nothing changes the repository in between.
    with repository_lock(st, f"restore {backup_id}") if confirm else nullcontext():
        return _restore(st, backup_id, components, keyspace, target_keyspace, cassandra_method,
                        index_strategy, verify_checksums, mirror_files, reference_backup,
                        reference_date, allow_partial, confirm, t0)


def _restore(st: Stack, backup_id: str, components: list[str], keyspace: str | None,
             target_keyspace: str | None, cassandra_method: str, index_strategy: str,
             verify_checksums: bool, mirror_files: bool, reference_backup: str,
             reference_date: str, allow_partial: bool, confirm: bool, t0: float) -> dict:
    logger = get_run_logger()
    if reference_backup:  # proved readable and covering every row before anything is touched
        ref = load_reference_task(st, reference_backup, keyspace, reference_date, allow_partial)
        if ref.problems:
            raise RestoreRefused(reference_backup, ref.problems)
        manifest = ref.manifest
        bid, components = manifest.backup_id, ["cassandra"]
        st = st.model_copy(update={"repository": LocalRepository(kind="local", path=reference_backup)})
    else:
        with open_repository(st) as repo:
            bid = latest_complete(repo) if backup_id == "latest" else backup_id
            manifest = read_manifest(repo, bid)
    components = [c for c in dict.fromkeys(components)]
    recorded = manifest.cassandra or {}
    keyspaces = [cql_identifier(keyspace)] if keyspace else sorted(recorded.get("keyspaces", {}))
    if target_keyspace and len(keyspaces) != 1:
        raise ValueError("target_keyspace needs exactly one source keyspace (set 'keyspace')")
    beside = bool(target_keyspace) and target_keyspace != keyspaces[0]

    # -- 1. validate: nothing is touched before all of this passed ------------------------------
    problems = [f"component {c} is not in backup {bid} ({', '.join(manifest.components)})"
                for c in components if c not in manifest.components]
    objects = [o for o in manifest.objects if o.component in components
               and (o.component != "cassandra" or o.keyspace in keyspaces)]
    problems += check_objects_task(st, manifest.model_copy(update={"objects": objects}),
                                   checksums=verify_checksums)
    method = None
    if "cassandra" in components:
        problems += check_schema(manifest, keyspaces)
        problems += cluster_problems(st)
        if not problems:
            method = cassandra_method
            if method == "auto":
                method = (choose_method(recorded, current_topology(st)) if recorded.get("nodes")
                          else "sstableloader")  # no recorded topology: route rows afresh
    if "elasticsearch" in components and index_strategy == "snapshot":
        if st.elasticsearch is None:
            problems.append("the stack has no elasticsearch section")
        elif manifest.elasticsearch:
            if problem := elasticsearch.check_snapshot(st.elasticsearch, manifest.elasticsearch):
                problems.append(problem)
    if "files" in components and st.attachments is None:
        problems.append("the stack has no attachments section")
    if problems:
        raise RestoreRefused(bid, problems)

    plan = {"backup_id": bid, "components": components, "keyspaces": keyspaces,
            "target_keyspace": target_keyspace or keyspaces[0] if keyspaces else None,
            "cassandra_method": method, "index_strategy": index_strategy,
            "objects_verified": len(objects), "checksums": verify_checksums}
    if reference_backup:
        plan["reference"] = ref.notes
    if not confirm:
        create_markdown_artifact("# Restore plan (dry run: nothing changed)\n\n"
                                 + "".join(f"- {k}: {v}\n" for k, v in plan.items())
                                 + "\nRun again with `confirm=True` to restore.", key="restore-plan")
        logger.info("dry run, nothing changed: %s", plan)
        return {"dry_run": True, **plan}

    # -- 2. act --------------------------------------------------------------------------------
    report: dict = {"plan": plan}
    thehive_svc = st.service("thehive")
    touch_thehive = thehive_svc is not None and not (beside and components == ["cassandra"])
    errors: list[str] = []
    if touch_thehive:
        for node in thehive_svc.nodes:
            services.stop_node(st, "thehive", node)
    try:
        if "cassandra" in components:
            report["cassandra"] = _restore_cassandra(st, manifest, keyspaces, target_keyspace,
                                                     method, objects)
        if "elasticsearch" in components:
            if index_strategy == "snapshot":
                report["elasticsearch"] = elasticsearch.restore_snapshot_task(
                    st.elasticsearch, manifest.elasticsearch)
            else:
                thehive.set_rebuild_flag(st)
                report["elasticsearch"] = {"rebuild": "TheHive rebuilds the index at its next start"}
        if "files" in components:
            report["files"] = files.restore_attachments_task(st, manifest.files, objects, mirror_files)
    except Exception as exc:
        errors.append(str(exc))
    finally:
        if touch_thehive:
            try:
                for node in thehive_svc.nodes:
                    services.start_node(st, "thehive", node)
                services.wait_healthy(st, "thehive")
                report["thehive"] = "healthy"
            except Exception as exc:
                errors.append(f"TheHive did not come back healthy: {exc}")
                report["thehive"] = f"NOT healthy: {exc}"
            finally:
                if "elasticsearch" in components and index_strategy == "rebuild":
                    thehive.clear_rebuild_flag(st)
    report["seconds"] = round(time.monotonic() - t0, 1)
    _report(report, errors)
    if errors:
        raise RestoreFailed(f"restore of {bid} failed:\n- " + "\n- ".join(errors))
    logger.info("restore of %s complete in %.1fs", bid, report["seconds"])
    return report


def _restore_cassandra(st: Stack, manifest: Manifest, keyspaces: list[str], target: str | None,
                       method: str, objects) -> dict:
    recorded = manifest.cassandra
    out = {}
    for ks in keyspaces:
        dest = cql_identifier(target or ks)
        schema = recreate_keyspace(st, recorded["keyspaces"][ks]["schema_cql"], ks, dest)
        archives = [o for o in objects if o.keyspace == ks and o.table]
        jobs = (plan_import(archives, recorded["nodes"], st) if method == "import"
                else plan_loader(archives, st))
        credentials = create_loader_role(st, dest) if method == "sstableloader" else None
        try:
            queues: dict[str, list] = {}
            for job in jobs:
                queues.setdefault(job.node, []).append(job)
            futures = fan_out(queues, lambda node, job: load_archive_task.submit(
                st, job, dest, method, credentials), 2, lambda f: None)
            failed = [f for f in futures if f.state.is_failed()]
            if failed or len(futures) != len(jobs):
                raise RestoreFailed(f"{len(failed)} table load(s) failed in {dest}: "
                                    f"{failed[0].state.message if failed else 'not all started'}")
            loads = [f.result() for f in futures]
        finally:
            drop_loader_role(st, credentials)
        out[dest] = {"method": method, "archives": len(loads),
                     "sstable_files": sum(x["files"] for x in loads), **schema}
    return out


def _report(report: dict, errors: list[str]) -> None:
    rows = []
    for ks, r in (report.get("cassandra") or {}).items():
        rows.append({"what": f"cassandra {ks}", "detail": f"{r['archives']} archives, "
                     f"{r['sstable_files']} files via {r['method']}", "note": r["auto_snapshot_note"]})
    if es := report.get("elasticsearch"):
        rows.append({"what": "elasticsearch", "detail": str(es.get("docs", es)), "note": ""})
    if f := report.get("files"):
        rows.append({"what": "attachments", "detail": f"{f['files']} files verified", "note": ""})
    rows.append({"what": "thehive", "detail": report.get("thehive", "not touched"), "note": ""})
    create_table_artifact(rows, key="restore-report",
                          description=("FAILED: " + "; ".join(errors)) if errors
                          else f"restored in {report['seconds']}s")
