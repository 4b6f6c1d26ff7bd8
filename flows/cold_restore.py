"""Cold restore: put every folder of a cold backup back, then start the stack in order.

Safety order — validate, then act: the backup's manifest is read (kind ``cold``), no declared
service may be running, every object must be present with its size and SHA-256 (unless
``check_checksums`` is off: presence and size only), and every target folder must be empty, missing,
or — with ``wipe`` — is moved aside to ``<path>.before-<backup-id>`` (never deleted). Only then is a
byte written: each archive is streamed from the repository, checked member by member
(tasks/archive.unpack) and extracted by ``tar --same-owner -xpf -`` on its node, so owners and modes
come back as saved. Then Cassandra (all UN), Elasticsearch (yellow/green) and TheHive (health URL)
are started and waited for. When an extraction fails nothing is started: the report says which
folders were restored and where their previous contents are.
"""
from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from config.model import Stack
from flows.cold_backup import collect, run_hooks, start_services
from flows.common import RestoreRefused, resolve_stack
from tasks import services
from tasks.hosts import host_for
from tasks.lock import repository_lock
from tasks.manifest import Manifest, ObjectEntry, read_manifest
from tasks.repositories import open_repository
from tasks.transfer import verify


class ColdRestoreFailed(RuntimeError):
    pass


@task(name="verify object", task_run_name="verify {key}", cache_policy=NO_CACHE)
def verify_task(stack: Stack, key: str, size: int, sha256: str, checksums: bool) -> str | None:
    with open_repository(stack) as repo:
        if not checksums:
            info = repo.stat(key)
            if info is None:
                return f"{key}: missing"
            return None if info.size == size else f"{key}: size {info.size}, expected {size}"
        return verify(repo, key, size, sha256)


def targets(st: Stack, manifest: Manifest) -> list[tuple[ObjectEntry, str]]:
    """Each archive of the backup and the folder it goes back to: the path the stack declares
    now for that service/name/node, else the path it was saved from."""
    declared = {(s.node, s.service, s.name): s.path for s in services.declared_paths(st)[0]}
    out = []
    for o in manifest.objects:
        if getattr(o, "role", None) != "archive":
            continue
        path = declared.get((o.node, o.service, o.name), o.path)
        out.append((o, path))
    return out


@flow(name="cold-restore", task_runner=ThreadPoolTaskRunner(max_workers=16))
def cold_restore(stack: str = "", backup_id: str = "", wipe: bool = False,
                 check_checksums: bool = True) -> dict:
    """Restore a cold backup into the stopped stack and start it.

    Args:
        stack: path of the stack file (empty: the local sandbox).
        backup_id: the cold backup to restore (see list-backups).
        wipe: move non-empty target folders aside to `<path>.before-<backup-id>` instead of refusing.
        check_checksums: re-read every object and compare its SHA-256 before touching anything.
    """
    st = resolve_stack(stack)
    if not backup_id:
        raise ValueError("backup_id is required")
    with repository_lock(st, f"cold-restore {backup_id}"):
        return _cold_restore(st, backup_id, wipe, check_checksums)


def _cold_restore(st: Stack, backup_id: str, wipe: bool, check_checksums: bool) -> dict:
    logger = get_run_logger()
    t0 = time.monotonic()
    with open_repository(st) as repo:
        manifest = read_manifest(repo, backup_id)
    if manifest.kind != "cold":
        raise RestoreRefused(backup_id, [f"{backup_id} is a {manifest.kind} backup, not a cold one"],
                             "cold restore")
    plan = targets(st, manifest)
    problems: list[str] = []
    node_names = {n.name for n in st.nodes}
    for o, _ in plan:
        if o.node not in node_names:
            problems.append(f"{o.key}: node {o.node!r} is not in stack {st.name!r}")
    if problems:
        raise RestoreRefused(backup_id, problems, "cold restore")

    # 1. Nothing may run.
    running = services.running_services(st)
    if running:
        raise RestoreRefused(backup_id, [f"{svc} is running on {', '.join(nodes)}; stop the stack first"
                                         for svc, nodes in running.items()], "cold restore")
    # 2. Every object present and intact.
    futures = {o.key: verify_task.submit(st, o.key, o.size, o.sha256, check_checksums)
               for o in manifest.objects}
    for key, f in futures.items():
        f.wait()
        if not f.state.is_completed():
            problems.append(f"{key}: cannot verify: {f.state.message}")
        elif f.result():
            problems.append(f.result())
    # 3. Every target empty (or wipe).
    occupied: list[tuple[str, str]] = []
    for o, path in plan:
        with host_for(st, o.node) as host:
            state = services.folder_state(host, path)
            if state == "not-a-folder":
                problems.append(f"{o.node}:{path} exists and is not a folder")
            elif state == "non-empty":
                aside = services.aside_path(path, backup_id)
                if not wipe:
                    problems.append(f"{o.node}:{path} is not empty (wipe=True moves it to {aside})")
                elif host.run(["test", "-e", aside], timeout=60, check=False).exit_code == 0:
                    problems.append(f"{o.node}:{aside} already exists; move it away first")
                else:
                    occupied.append((o.node, path))
    if problems:
        raise RestoreRefused(backup_id, problems, "cold restore")
    logger.info("cold restore %s: %d objects verified, %d folders to restore, %d to move aside",
                backup_id, len(manifest.objects), len(plan), len(occupied))

    # 4. Act: move aside, extract (in parallel over folders), then start in order.
    events: list[dict] = []
    moved = {}
    for node, path in occupied:
        moved[f"{node}:{path}"] = services.move_aside(st, node, path, backup_id)
        events.append(services.event("moved-aside", None, node, path=path, to=moved[f"{node}:{path}"]))
    extracts = {f"{o.node}:{path}": services.extract_path_task.submit(st, o.node, o.key, path, o.files)
                for o, path in plan}
    errors = collect(extracts, events, None, "extract-failed")
    if errors:
        _report(backup_id, events, moved, "not started (restore incomplete)", None, errors)
        raise ColdRestoreFailed(f"cold restore of {backup_id} failed, the stack was NOT started:\n- "
                                + "\n- ".join(errors)
                                + "".join(f"\n  previous contents of {k}: {v}" for k, v in moved.items()))
    restart_errors = start_services(st, events, backup_id)
    restart_errors += run_hooks(st, "after_start", backup_id, events)
    events.sort(key=lambda e: e["t"])
    restart = "ok" if not restart_errors else "FAILED: " + "; ".join(restart_errors)
    seconds = round(time.monotonic() - t0, 2)
    _report(backup_id, events, moved, restart, seconds, [])
    if restart_errors:
        raise ColdRestoreFailed(f"cold restore of {backup_id}: folders restored, but {restart}")
    logger.info("cold restore %s complete in %.1fs", backup_id, seconds)
    return {"backup_id": backup_id, "folders": len(plan), "moved_aside": moved,
            "restart": restart, "events": events, "seconds": seconds}


def _report(backup_id: str, events: list[dict], moved: dict, restart: str, seconds: float | None,
            errors: list[str]) -> None:
    create_markdown_artifact(
        f"# Cold restore of `{backup_id}`\n\n"
        f"- extraction: {'ok' if not errors else 'FAILED'}\n"
        + "".join(f"  - {e}\n" for e in errors)
        + f"- restart: {restart}\n- seconds: {seconds}\n"
        + ("- moved aside (not deleted):\n" + "".join(f"  - {k} → {v}\n" for k, v in moved.items())
           if moved else "")
        + f"- steps: {len(events)}\n",
        key="cold-restore-report")
