"""prefect.yaml registers every flow on a real Prefect server, as an operator would deploy it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

ROOT = Path(__file__).resolve().parents[1]
FLOWS = {"hot-backup", "cold-backup", "verify-backup", "restore-drill", "prune", "restore", "cold-restore",
         "list-backups", "unlock", "node-rebuild", "node-backup"}


def prefect(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "THEHIVE_BACKUP_HOME": str(ROOT)}
    r = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", *argv], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_every_flow_is_deployed_with_its_schedule_and_a_checked_form(prefect_server):
    prefect("work-pool", "create", "thehive-backup", "--type", "process", "--overwrite")
    prefect("deploy", "--all")
    declared = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        flows = {f.id: f.name for f in client.read_flows()}
    assert set(declared) <= set(deployments)
    assert {flows[deployments[name].flow_id] for name in declared} == FLOWS
    for name, spec in declared.items():
        d = deployments[name]
        assert d.enforce_parameter_schema and d.work_pool_name == "thehive-backup"
        assert "stack" not in (d.parameters or {})  # the Prefect Variable names it, never a default
        assert d.parameter_openapi_schema["properties"], name  # the UI's form
        active = [s.active for s in d.schedules]
        assert active == [s.get("active", True) for s in spec.get("schedules", [])], name
    assert deployments["daily-prune"].parameters == {"dry_run": False}
    # The drill's weekly proof: the backup it drills (the newest) recorded row digests.
    assert deployments["weekly-hot-backup-with-digests"].parameters == {"record_digests": True}
    restore_form = deployments["restore"].parameter_openapi_schema["properties"]
    assert restore_form["confirm"]["default"] is False
    rebuild_form = deployments["node-rebuild"].parameter_openapi_schema["properties"]
    assert rebuild_form["confirm"]["default"] is False and not deployments["node-rebuild"].schedules
