"""`make demo`: the sandbox up, a local Prefect server set up as an operator would (every
deployment of prefect.yaml, the sandbox's password in a Secret block, the Prefect Variable naming the
stack file, a process worker for the work pool), then the hot backup and a verify (and with
``DEMO_DRILL=1`` a restore drill) run **through their deployments** by that worker, and the results.

A newcomer's first proof that the tool works: everything runs on this machine, on loopback.
The Prefect server (SQLite), its worker and the sandbox keep running afterwards, so the runs can be
browsed at http://127.0.0.1:4200 and any deployment (a restore, a drill...) started from its form
there; `make sandbox-down` stops them all (the worker's PID and log: .sandbox/prefect-worker/).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

REPO = Path(__file__).resolve().parent.parent
PREFECT_PORT = 4200
os.environ.setdefault("PREFECT_HOME", str(REPO / ".sandbox" / "prefect"))
os.environ.setdefault("PREFECT_API_URL", f"http://127.0.0.1:{PREFECT_PORT}/api")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")


def start_prefect_server() -> None:
    """`prefect server start` (API and UI) on SQLite, as a sandbox service (stopped by `make
    sandbox-down`); tests/test_ui_browser.py starts its UI with the same helpers."""
    from tests.stack import prefect_ops

    service = prefect_ops.server_service(REPO / ".sandbox" / "prefect-server", "127.0.0.1", PREFECT_PORT,
                                         {"PREFECT_HOME": os.environ["PREFECT_HOME"]})
    prefect_ops.start_server(service, os.environ["PREFECT_API_URL"])


SECRET_BLOCK = "sandbox-cassandra-password"
PREFECT_STACK = REPO / ".sandbox" / "stack-prefect.yaml"


def set_up_prefect(stack_file: Path) -> Path:
    """Deploy prefect.yaml, store the sandbox's password as a Secret block, name the stack (a
    copy that reads the password from that block) in the Prefect Variable, start the worker."""
    import yaml

    from tests.stack import prefect_ops
    from tests.stack.sandbox import LAYOUT

    api = os.environ["PREFECT_API_URL"]
    prefect_ops.deploy_all(api)
    prefect_ops.save_secret(SECRET_BLOCK, os.environ[LAYOUT.password_env])
    data = prefect_ops.with_secret_blocks(yaml.safe_load(stack_file.read_text()),
                                          {"cassandra": SECRET_BLOCK})
    PREFECT_STACK.write_text(yaml.safe_dump(data, sort_keys=False))
    prefect_ops.set_stack_variable(str(PREFECT_STACK))
    worker = prefect_ops.worker_service(REPO / ".sandbox" / "prefect-worker", api)
    if not worker.running():
        prefect_ops.start_worker(worker, api, drop_env=(LAYOUT.password_env,))
    return worker.log


def through_deployment(name: str, parameters: dict | None = None) -> FlowRun:
    """Run the deployment on the worker and wait for its final state; raise unless Completed."""
    from tests.stack import prefect_ops

    t0 = time.monotonic()
    run = prefect_ops.run_and_wait(name, parameters, timeout=1200)
    state = run.state
    assert state is not None  # run_and_wait returns final runs only
    print(f"   {name}: flow run {run.name} {state.name} in {time.monotonic() - t0:.0f}s")
    if not state.is_completed():
        raise SystemExit(f"demo: {name} ended {state.name}: {state.message}")
    return run


def main() -> int:
    from tests.stack import sandbox

    t0 = time.monotonic()
    print("== bringing the sandbox up (first run downloads Cassandra and Elasticsearch) ...")
    stack_file = sandbox.up()
    sandbox.load_secrets()
    print(f"   sandbox ready in {time.monotonic() - t0:.0f}s; stack file {stack_file}")
    start_prefect_server()
    ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
    print(f"== Prefect server: {ui}")
    worker_log = set_up_prefect(stack_file)
    print(f"   every deployment of prefect.yaml registered (work pool 'thehive-backup'); Secret block "
          f"{SECRET_BLOCK!r}; Variable 'thehive-backup-stack' = {PREFECT_STACK}")
    print(f"   process worker running in the background (log {worker_log})")

    from prefect.client.orchestration import get_client

    from config import load_stack
    from tasks.catalog import catalog
    from tasks.manifest import read_manifest
    from tasks.repositories import open_repository

    print("== hot backup of the sandbox (Cassandra x3, Elasticsearch, attachments), "
          "through the deployment hot-backup/nightly-hot-backup ...")
    run = through_deployment("hot-backup/nightly-hot-backup", {"label": "make demo"})
    stack = load_stack(PREFECT_STACK)
    with open_repository(stack) as repo:
        rows = catalog(repo)
        backup_id = next(r["id"] for r in rows if r["status"] == "complete")
        manifest = read_manifest(repo, backup_id)
    print(f"\n== report of {manifest.backup_id} (flow run {run.name})")
    print(f"{'node':<12} {'object':<28} {'raw MiB':>8} {'stored MiB':>10} {'s':>6}")
    for o in manifest.objects:
        name = o.table or o.key.rsplit("/", 1)[-1]
        print(f"{o.node or '-':<12} {name:<28} {(o.raw_size or o.size) / 2**20:>8.2f} "
              f"{o.size / 2**20:>10.2f} {o.seconds or 0:>6.2f}")
    if es := manifest.elasticsearch:
        print(f"Elasticsearch snapshot {es.snapshot}: {es.state}, indices {', '.join(es.indices)}")
    print(f"timings (s): {manifest.timings}")
    print("\n== verify (deployment verify-backup/weekly-verify): every object re-read, sizes, "
          "SHA-256 and archive members checked")
    through_deployment("verify-backup/weekly-verify", {"backup_id": backup_id})
    if os.environ.get("DEMO_DRILL") == "1":  # a full restore under a scratch name: minutes more
        print("== restore drill (deployment restore-drill/weekly-restore-drill): restored into a "
              "scratch keyspace, compared table by table, dropped")
        through_deployment("restore-drill/weekly-restore-drill", {"backup_id": backup_id})
    else:
        print("== restore drill: start it from the UI (Deployments > weekly-restore-drill > Run), "
              "or run `DEMO_DRILL=1 make demo`")
    print("\n== catalog")
    for r in rows:
        print(f"  {r['id']:<28} {r['status']:<10} {r['size_mib']:>8} MiB  {r['components']}")
    with get_client(sync_client=True) as client:
        names = sorted(f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments())
    print(f"\ndone in {time.monotonic() - t0:.0f}s. Prefect UI: {ui}")
    print(f"  deployments ({len(names)}): {', '.join(names)}")
    print("  a restore or a drill: Deployments > restore (or weekly-restore-drill) > Run > Custom run "
          "(restore is a dry run until confirm is set)")
    print("  stop the sandbox, the server and the worker with `make sandbox-down`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
