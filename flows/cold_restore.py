"""Cold restore: put every folder of a cold backup back, then start the stack in order.

Safety order — validate, then act. Before a byte is moved: the backup's manifest is read (kind
``cold``); no declared service may be running; every object passes the validator of every restore
(tasks/validate.check_object: present, its size, its SHA-256 unless ``check_checksums`` is off, and
every archive decompressed and walked member by member, so an unsafe member or a corrupt stream is
refused here); every archive has a readable inventory; every target folder is empty, missing, or —
with ``wipe`` — can be moved aside to ``<path>.before-<backup-id>`` (never deleted).

Then a journal is written beside every target (tasks/restore_folders), the non-empty folders are
moved aside, and each archive is streamed into its folder by ``tar --same-owner -xpf -`` on its
node (members checked again on the way), after which every extracted file is hashed on the node and
compared with the archive's inventory. Only a complete restore starts the stack (Cassandra all UN,
Elasticsearch yellow/green, TheHive health URL).

When an extraction or a re-hash fails, every folder is put back as it was before (what was
extracted removed, the moved-aside folders moved back) and the stack is started as the operator
had it before stopping it: "rolled back: folders as before, stack started". If the rollback itself
fails, nothing is started and the message says which folder is where. A cancelled or crashed run
does the same from its journals; a killed run leaves them, and running the same restore again
first puts the folders back from them, then restores.
"""
from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.logging.loggers import flow_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from config.model import Stack
from flows.common import RestoreRefused, resolve_stack
from flows.lifecycle import collect, run_hooks, start_all, start_in_order
from flows.reports import cold_restore_report
from tasks import restore_folders as folders
from tasks import services
from tasks.folders import declared_paths
from tasks.lock import repository_lock
from tasks.manifest import Manifest, ObjectEntry, read_manifest
from tasks.repositories import open_repository
from tasks.repositories.crypto import EncryptionError
from tasks.ssh_pool import shared_ssh
from tasks.validate import check_objects_task


class ColdRestoreFailed(RuntimeError):
    pass


def targets(st: Stack, manifest: Manifest) -> list[tuple[ObjectEntry, str]]:
    """Each archive of the backup and the folder it goes back to: the path the stack declares
    now for that service/name/node, else the path it was saved from."""
    declared = {(s.node, s.service, s.name): s.path for s in declared_paths(st)[0]}
    out = []
    for o in manifest.objects:
        if o.role != "archive":
            continue
        path = declared.get((o.node or "", o.service or "", o.name or "")) or o.path
        if o.node is None or path is None:
            raise ValueError(f"{o.key}: a cold archive must name its node and path")
        out.append((o, path))
    return out


def _put_back_all(st: Stack, journals: list[folders.Journal], events: list[dict]) -> list[str]:
    """Put every folder back from its journal (in parallel); the errors, empty when all went back."""
    futures = {f"{j.node}:{j.path}": folders.put_back_task.submit(st, j) for j in journals}
    errors = []
    for where, f in futures.items():
        f.wait()
        if f.state.is_completed():
            events.append(services.event("put-back", None, where.split(":")[0], done=f.result()))
        else:
            errors.append(f"{where}: {f.state.message}")
    return errors


def _left_journals(st: Stack, plan: list[tuple[ObjectEntry, str]], backup_id: str) -> list[folders.Journal]:
    found = (folders.read_journal(st, o.node or "", path, backup_id) for o, path in plan)
    return [j for j in found if j is not None]


def _after_abort(flow, flow_run, state) -> None:
    """Cancellation/crash hook: never start the stack on partial data. Folders with a journal
    are put back; only when all went back (or the restore had completed) is the stack started."""
    log = flow_run_logger(flow_run, flow)
    try:
        st = resolve_stack(flow_run.parameters.get("stack", ""))
        backup_id = flow_run.parameters["backup_id"]
        with open_repository(st) as repo:
            plan = targets(st, read_manifest(repo, backup_id))
        journals = _left_journals(st, plan, backup_id)
    except Exception as exc:
        log.error("cold restore aborted; its folders could not be examined (%s): the stack is left "
                  "as it is; run the same cold restore again", exc)
        return
    if not journals:
        log.warning("cold restore %s aborted before any folder was changed; the stack is left as it is",
                    backup_id)
        return
    errors = []
    if any(j.phase != "complete" for j in journals):
        for j in journals:
            try:
                log.warning("cold restore %s aborted: %s", backup_id, folders.put_back(st, j))
            except Exception as exc:
                errors.append(f"{j.node}:{j.path}: {exc} (journal {j.where})")
    else:
        for j in journals:
            folders.remove_journal(st, j)
    if errors:
        log.error("cold restore %s aborted and could not put every folder back; the stack was NOT "
                  "started; run the same cold restore again:\n- %s", backup_id, "\n- ".join(errors))
        return
    _, start_errors = start_all(st)
    log.warning("cold restore %s aborted: folders %s, stack %s", backup_id,
                "as before" if any(j.phase != "complete" for j in journals) else "restored",
                "started" if not start_errors else "NOT healthy: " + "; ".join(start_errors))


@flow(name="cold-restore", task_runner=ThreadPoolTaskRunner(max_workers=16),  # type: ignore[arg-type]
      on_cancellation=[_after_abort], on_crashed=[_after_abort])
def cold_restore(stack: str = "", backup_id: str = "", wipe: bool = False,
                 check_checksums: bool = True) -> dict:
    """Restore a cold backup into the stopped stack and start it.

    Args:
        stack: the stack file's path; empty: $THEHIVE_BACKUP_STACK, else the Prefect Variable
            thehive-backup-stack.
        backup_id: the cold backup to restore (see list-backups).
        wipe: move non-empty target folders aside to `<path>.before-<backup-id>` instead of refusing.
        check_checksums: compare every object's SHA-256 before touching anything (archives are
            always read through and their members checked, with or without it).
    """
    st = resolve_stack(stack)
    if not backup_id:
        raise ValueError("backup_id is required")
    with repository_lock(st, f"cold-restore {backup_id}"), shared_ssh():
        return _cold_restore(st, backup_id, wipe, check_checksums)


def _validate(st: Stack, backup_id: str, check_checksums: bool) -> tuple[Manifest, list]:
    """Everything checked that can be before a folder is touched; raises RestoreRefused."""
    try:
        with open_repository(st) as repo:
            manifest = read_manifest(repo, backup_id)
    except EncryptionError as exc:  # wrong or missing key: refused before a folder is touched
        raise RestoreRefused(backup_id, [str(exc)], "cold restore") from None
    if manifest.kind != "cold":
        raise RestoreRefused(backup_id, [f"{backup_id} is a {manifest.kind} backup, not a cold one"],
                             "cold restore")
    plan = targets(st, manifest)
    node_names = {n.name for n in st.nodes}
    problems = [f"{o.key}: node {o.node!r} is not in stack {st.name!r}" for o, _ in plan
                if o.node not in node_names]
    if problems:
        raise RestoreRefused(backup_id, problems, "cold restore")
    running = services.running_services(st)
    if running:
        raise RestoreRefused(backup_id, [f"{svc} is running on {', '.join(nodes)}; stop the stack first"
                                         for svc, nodes in running.items()], "cold restore")
    problems = check_objects_task(st, manifest, checksums=check_checksums)
    keys = {o.key for o in manifest.objects}
    with open_repository(st) as repo:
        for o, _ in plan:
            inv = o.inventory_key
            if not inv or inv not in keys:
                problems.append(f"{o.key}: no inventory in the manifest, extracted files cannot be checked")
                continue
            try:
                folders.inventory_files(repo.get_bytes(inv))
            except Exception as exc:
                problems.append(f"{inv}: unreadable inventory: {exc}")
    if problems:
        raise RestoreRefused(backup_id, problems, "cold restore")
    return manifest, plan


def _cold_restore(st: Stack, backup_id: str, wipe: bool, check_checksums: bool) -> dict:
    logger = get_run_logger()
    t0 = time.monotonic()
    manifest, plan = _validate(st, backup_id, check_checksums)
    events: list[dict] = []

    # A run killed earlier left journals: put those folders back first, then restore as usual.
    left = _left_journals(st, plan, backup_id)
    if left and all(j.phase == "complete" for j in left):
        # Killed while starting the stack after a complete restore: only the start is missing.
        logger.warning("cold restore %s: an earlier run restored every folder; starting the stack", backup_id)
        return _start(st, backup_id, left, events, {}, t0, len(plan))
    if left:
        logger.warning("cold restore %s: an earlier run was interrupted; putting %d folders back first",
                       backup_id, len(left))
        errors = _put_back_all(st, left, events)
        if errors:
            raise ColdRestoreFailed(f"cold restore of {backup_id}: the folders of an interrupted run "
                                    "could not be put back, nothing else done:\n- " + "\n- ".join(errors))

    futures = [folders.plan_folder_task.submit(st, o.node, path, backup_id, wipe) for o, path in plan]
    results = [f.result() for f in futures]
    problems = [r for r in results if isinstance(r, str)]
    if problems:
        raise RestoreRefused(backup_id, problems, "cold restore")
    journals = [r for r in results if not isinstance(r, str)]
    moved = {f"{j.node}:{j.path}": j.aside for j in journals if j.aside}
    logger.info("cold restore %s: %d objects verified, %d folders to restore, %d to move aside",
                backup_id, len(manifest.objects), len(plan), len(moved))

    # Act. Journals first, so that every change below can be undone from them alone.
    for j in journals:
        folders.write_journal(st, j)
    try:
        for i, j in enumerate(journals):
            if j.aside:
                folders.move_aside(st, j.node, j.path, backup_id)
                journals[i] = folders.advance(j, "moved")
                folders.write_journal(st, journals[i])
                events.append(services.event("moved-aside", None, j.node, path=j.path, to=j.aside))
        extracts = {f"{o.node}:{path}": folders.extract_path_task.submit(
                        st, o.node, o.key, path, o.files, o.inventory_key)
                    for o, path in plan}
        errors = collect(extracts, events, None, "extract-failed")
    except Exception as exc:  # moving aside failed: nothing extracted yet
        errors = [f"moving aside: {type(exc).__name__}: {exc}"]
    if errors:
        _roll_back(st, backup_id, journals, events, moved, errors)

    for j in journals:
        folders.write_journal(st, folders.advance(j, "complete"))
    return _start(st, backup_id, journals, events, moved, t0, len(plan))


def _start(st: Stack, backup_id: str, journals: list[folders.Journal], events: list[dict], moved: dict,
           t0: float, n_folders: int) -> dict:
    """Every folder restored: start the stack in order, then drop the journals."""
    logger = get_run_logger()
    restart_errors = run_hooks(st, "before_start", backup_id, events)
    restart_errors += start_in_order(st, events)
    restart_errors += run_hooks(st, "after_start", backup_id, events)
    for j in journals:
        folders.remove_journal(st, j)
    events.sort(key=lambda e: e["t"])
    restart = "ok" if not restart_errors else "FAILED: " + "; ".join(restart_errors)
    seconds = round(time.monotonic() - t0, 2)
    cold_restore_report(backup_id, events, moved, restart, seconds, [])
    if restart_errors:
        raise ColdRestoreFailed(f"cold restore of {backup_id}: folders restored, but {restart}")
    logger.info("cold restore %s complete in %.1fs", backup_id, seconds)
    return {"backup_id": backup_id, "folders": n_folders, "moved_aside": moved,
            "restart": restart, "events": events, "seconds": seconds}


def _roll_back(st: Stack, backup_id: str, journals: list[folders.Journal], events: list[dict],
               moved: dict, errors: list[str]) -> None:
    """Put every folder back and start the stack as it was; always raises ColdRestoreFailed."""
    failed = "\n- ".join(errors)
    try:
        rollback_errors = _put_back_all(st, journals, events)
    except Exception as exc:  # never let a rollback error hide where the folders are
        rollback_errors = [f"{type(exc).__name__}: {exc}"]
    if rollback_errors:
        where = "".join(f"\n  {j.node}:{j.path}: " + (f"previous contents in {j.aside}" if j.aside
                        else f"was {j.before}") + f" (journal {j.where})" for j in journals)
        status = ("rollback FAILED, the stack was NOT started:\n- " + "\n- ".join(rollback_errors)
                  + f"\nfolders:{where}\nrun the same cold restore again to finish it")
    else:
        restart_errors = run_hooks(st, "before_start", backup_id, events)
        restart_errors += start_in_order(st, events)
        restart_errors += run_hooks(st, "after_start", backup_id, events)
        status = ("rolled back: folders as before, stack started" if not restart_errors else
                  "rolled back: folders as before, but the stack did not start: " + "; ".join(restart_errors))
    events.sort(key=lambda e: e["t"])
    cold_restore_report(backup_id, events, moved, status, None, errors)
    raise ColdRestoreFailed(f"cold restore of {backup_id} failed:\n- {failed}\n{status}")


