"""Prefect as an operator sets it up: the work pool, ``prefect deploy --all``, Secret blocks, the
stack Variable and a process worker running in the background (start/stop/status scripts).

Shared by ``make demo`` (deployments/demo.py) and the tests that run flows through their
deployments (tests/test_worker.py), so both exercise exactly the documented setup.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from tests.stack.proc import Service, wait_until, write_service

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from config.model import Stack

ROOT = Path(__file__).resolve().parents[2]
POOL = "thehive-backup"
PREFECT = Path(sys.executable).parent / "prefect"


def prefect_env(api_url: str) -> dict[str, str]:
    """What a worker host needs: the API, and where the project lives (prefect.yaml's pull step)."""
    return {"PREFECT_API_URL": api_url, "THEHIVE_BACKUP_HOME": str(ROOT),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_TASKS_DEFAULT_NO_CACHE": "true"}


def prefect_cli(api_url: str, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``prefect --no-prompt ARGV`` in the project folder; raises with its output on failure."""
    r = subprocess.run([str(PREFECT), "--no-prompt", *argv], cwd=ROOT,
                       env={**os.environ, **prefect_env(api_url)},
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(argv)} failed ({r.returncode}):\n"
                           f"{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r


def deploy_all(api_url: str) -> None:
    """The work pool and every deployment of prefect.yaml (both idempotent)."""
    prefect_cli(api_url, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    prefect_cli(api_url, "deploy", "--all")


def save_secret(name: str, value: str) -> None:
    """A Prefect Secret block (``{prefect_secret: NAME}`` in a stack file)."""
    from prefect.blocks.system import Secret

    Secret(value=value).save(name, overwrite=True)


def set_stack_variable(value: str) -> None:
    """The Prefect Variable a flow given no ``stack`` reads (flows/common.resolve_stack)."""
    from prefect.variables import Variable

    from flows.common import STACK_VARIABLE

    Variable.set(STACK_VARIABLE, value, overwrite=True)


def with_secret_blocks(data: dict[str, Any], blocks: dict[str, str]) -> dict[str, Any]:
    """A stack description whose Cassandra password is read from the Secret block
    ``blocks['cassandra']`` instead of an environment variable."""
    if "cassandra" in blocks and data["cassandra"].get("password"):
        data = {**data, "cassandra": {**data["cassandra"],
                                      "password": {"prefect_secret": blocks["cassandra"]}}}
    return data


def worker_service(folder: Path, api_url: str, name: str = "thehive-backup-worker",
                   queues: tuple[str, ...] = ("default",)) -> Service:
    """A process worker for the pool's ``queues`` (prefect.yaml's deployments use ``default``; a
    datacenter's worker polls its own) as a background service: ``folder/pid``, its log in
    ``folder/logs/prefect-worker.out``, stopped by ``folder/bin/stop`` (and so by
    ``make sandbox-down`` when ``folder`` is under .sandbox)."""
    return write_service(
        folder, "prefect-worker",
        [str(PREFECT), "worker", "start", "--pool", POOL, "--type", "process", "--name", name,
         *[arg for q in queues for arg in ("--work-queue", q)]],
        env=prefect_env(api_url), cwd=ROOT, grace_seconds=30)


def start_worker(service: Service, api_url: str, *, drop_env: tuple[str, ...] = (),
                 name: str | None = None) -> None:
    """Start the worker (without the environment variables ``drop_env``: secrets it must read
    from Secret blocks instead) and wait until the server sees it (``name``: that one) polling."""
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    subprocess.run([str(service.start_script)], check=True, timeout=60, env=env)
    from prefect.client.orchestration import get_client

    def polling() -> bool:
        with get_client(sync_client=True) as client:
            return any(str(w.status).upper().endswith("ONLINE") and name in (None, w.name)
                       for w in client.read_workers_for_work_pool(POOL))

    wait_until(polling, "the process worker polling the work pool", 120, service, interval=1)


def server_service(folder: Path, host: str, port: int, env: dict[str, str], *,
                   services: bool = True) -> Service:
    """``prefect server start`` (the API and the UI, as ``make demo`` runs it) as a background
    service: ``folder/pid``, its log in ``folder/logs/prefect-server.out``. ``services=False``:
    only the web server (a UI over a database another server runs the services of)."""
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    return write_service(folder, "prefect-server", argv + ([] if services else ["--no-services"]),
                         env={"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **env}, grace_seconds=20)


def start_server(service: Service, api_url: str, timeout: float = 180) -> None:
    """Start the server unless one already answers at ``api_url``; wait until it is healthy."""
    import urllib.request

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2):
                return True
        except OSError:
            return False

    if not healthy():
        service.start()
        wait_until(healthy, "the Prefect server", timeout, service)


def secret_stack(real_stack: Any, cluster: Any, folder: Path) -> tuple[Path, Stack]:
    """A stack file on a fresh local repository of the test stack whose Cassandra password is a
    Secret block (a worker started without the password variables reads it from there)."""
    import uuid

    from config import load_stack

    block = f"thb-test-{cluster.cluster_name.lower()}-password"
    save_secret(block, cluster.password)
    repo = real_stack.repository("local", f"w{uuid.uuid4().hex[:10]}")
    data = with_secret_blocks(real_stack.stack_data(cluster, repo), {"cassandra": block})
    assert data["cassandra"]["password"] == {"prefect_secret": block}
    path = real_stack.write_stack_file(folder / f"stack-{uuid.uuid4().hex[:6]}.yaml", data)
    return path, load_stack(path)


def run_and_wait(deployment: str, parameters: dict[str, Any] | None = None,
                 timeout: float = 1200) -> FlowRun:
    """``run_deployment`` to its final state (the flow run object, state included)."""
    from prefect.deployments import run_deployment

    run = cast("FlowRun", run_deployment(deployment, parameters=parameters or {}, timeout=timeout,
                                         poll_interval=2, as_subflow=False))
    if not (run.state and run.state.is_final()):
        raise TimeoutError(f"{deployment}: flow run {run.id} not finished after {timeout:.0f}s "
                           f"({run.state.name if run.state else 'no state'})")
    return run


def wait_final(flow_run_id: UUID, timeout: float = 300) -> FlowRun:
    """The flow run once its state is final (Completed, Failed, Crashed, Cancelled)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} still {run.state.name if run.state else '?'} "
                                   f"after {timeout:.0f}s")
            time.sleep(1)


def artifact_data(flow_run_id: UUID, key: str) -> Any:
    """The data of the flow run's artifact ``key`` (a table artifact: a list of rows)."""
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    if not found:
        raise LookupError(f"flow run {flow_run_id} has no artifact {key!r}")
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


def run_deployment_nowait(deployment: str, parameters: dict[str, Any] | None = None) -> FlowRun:
    """A flow run of the deployment, scheduled now; returns at once (the flow run object)."""
    from prefect.deployments import run_deployment

    return cast("FlowRun", run_deployment(deployment, parameters=parameters or {}, timeout=0,
                                          as_subflow=False))


def cancel_and_wait(flow_run_id: UUID, message: str, timeout: float = 300) -> tuple[FlowRun, float]:
    """Cancel the flow run as the UI's Cancel button does (state Cancelling; the worker stops
    its process) and wait for its final state: the run and the seconds it took."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    t0 = time.monotonic()
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelling(message=message), force=True)
    final = wait_final(flow_run_id, timeout=timeout)
    return final, time.monotonic() - t0
