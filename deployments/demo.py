"""`make demo`: the sandbox up, a local Prefect server, the hot backup through it, then the
backup verified and drilled (restored into a scratch keyspace and compared), and the results.

A newcomer's first proof that the tool works: everything runs on this machine, on loopback.
The Prefect server (SQLite) and the sandbox keep running afterwards so the runs can be browsed at
http://127.0.0.1:4200; `make sandbox-down` stops both.
"""
from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PREFECT_PORT = 4200
os.environ.setdefault("PREFECT_HOME", str(REPO / ".sandbox" / "prefect"))
os.environ.setdefault("PREFECT_API_URL", f"http://127.0.0.1:{PREFECT_PORT}/api")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")


def start_prefect_server() -> None:
    """`prefect server start` on SQLite, as a sandbox service (stopped by `make sandbox-down`)."""
    from tests.stack.proc import wait_until, write_service

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{os.environ['PREFECT_API_URL']}/health", timeout=2):
                return True
        except OSError:
            return False

    if healthy():
        return
    service = write_service(
        REPO / ".sandbox" / "prefect-server", "prefect-server",
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(PREFECT_PORT)],
        env={"PREFECT_HOME": os.environ["PREFECT_HOME"],
             "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}, grace_seconds=20)
    service.start()
    wait_until(healthy, "the Prefect server", 180, service)


def main() -> int:
    from tests.stack import sandbox

    t0 = time.monotonic()
    print("== bringing the sandbox up (first run downloads Cassandra and Elasticsearch) ...")
    stack_file = sandbox.up()
    sandbox.load_secrets()
    print(f"   sandbox ready in {time.monotonic() - t0:.0f}s; stack file {stack_file}")
    start_prefect_server()
    print(f"== Prefect server: {os.environ['PREFECT_API_URL'].removesuffix('/api')}")

    from config import load_stack
    from flows.hot_backup import hot_backup
    from flows.verify import restore_drill, verify_backup
    from tasks.catalog import catalog
    from tasks.manifest import read_manifest
    from tasks.repositories import open_repository

    print("== hot backup of the sandbox (Cassandra x3, Elasticsearch, attachments) ...")
    result = hot_backup(stack=str(stack_file), label="make demo")
    stack = load_stack(stack_file)
    with open_repository(stack) as repo:
        manifest = read_manifest(repo, result["backup_id"])
        rows = catalog(repo)
    print(f"\n== report of {manifest.backup_id}")
    print(f"{'node':<12} {'object':<28} {'raw MiB':>8} {'stored MiB':>10} {'s':>6}")
    for o in manifest.objects:
        name = o.table or o.key.rsplit("/", 1)[-1]
        print(f"{o.node or '-':<12} {name:<28} {(o.raw_size or o.size) / 2**20:>8.2f} "
              f"{o.size / 2**20:>10.2f} {o.seconds or 0:>6.2f}")
    if es := manifest.elasticsearch:
        print(f"Elasticsearch snapshot {es.snapshot}: {es.state}, indices {', '.join(es.indices)}")
    print(f"timings (s): {manifest.timings}")
    print("\n== verify_backup: every object re-read, sizes, SHA-256 and archive members checked")
    verified = verify_backup(stack=str(stack_file), backup_id=result["backup_id"])
    print(f"   {verified['objects']} objects, {verified['bytes'] / 2**20:.1f} MiB: OK")
    print("== restore_drill: restored into a scratch keyspace, compared table by table, dropped")
    drill = restore_drill(stack=str(stack_file), backup_id=result["backup_id"])
    print(f"   {drill['tables']} tables, {drill['rows']} rows: identical to the backup")
    print("\n== catalog")
    for r in rows:
        print(f"  {r['id']:<28} {r['status']:<10} {r['size_mib']:>8} MiB  {r['components']}")
    print(f"\ndone in {time.monotonic() - t0:.0f}s. Browse the runs at "
          f"{os.environ['PREFECT_API_URL'].removesuffix('/api')}; stop with `make sandbox-down`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
