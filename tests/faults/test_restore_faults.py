"""A restore that cannot lose data, tried with faults and mistakes on the real 3-node stack.

Every test compares every row before and after. Faults are real: a staging folder on a tmpfs too
small for its archives, a `nodetool import` that fails on one node (a wrapper around the real
nodetool, as a broken node would), a restore process killed with SIGKILL in each phase.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from config import load_stack
from config.loader import StackConfigError
from flows.common import RestoreRefused
from flows.restore import RestoreFailed, restore
from tasks.rollback import rollback_tag
from tests.stack import seed
from tests.stack.thehive_standin import get_status

pytestmark = pytest.mark.usefixtures("prefect_server", "seeded3", "standin3")
REPO = Path(__file__).resolve().parents[2]
EXTRA_ROW = "INSERT INTO thehive.edgestore (key, column1, value) VALUES (0xdeadbeef, 0x01, 0x02)"


def fault_nodetool(real: Path, ctl: Path) -> str:
    """A nodetool that logs the restore's imports and, on request, slows or refuses them."""
    script = ctl / f"nodetool-{real.parent.parent.name}"
    node = real.parent.parent.name
    script.write_text(f"""#!/bin/sh
# test fault injection around the real nodetool
if [ "$1" = import ]; then
  case "$*" in *thb-restore-*)
    echo "$$ start {node}" >> "{ctl}/imports.log"
    [ -e "{ctl}/slow" ] && sleep 4
    if [ -e "{ctl}/fail-{node}" ]; then echo "injected fault: import refused" >&2; exit 1; fi
    "{real}" "$@"; rc=$?
    echo "$$ done {node} $rc" >> "{ctl}/imports.log"
    exit $rc;;
  esac
fi
exec "{real}" "$@"
""")
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def fault_stack(real_stack, cluster3, backup3, tmp_path):
    """A stack file on the backed-up repository whose nodes use the fault-injecting nodetool."""
    ctl = tmp_path / "ctl"
    ctl.mkdir()

    def make(edit=None) -> Path:
        data = real_stack.stack_data(cluster3, backup3["repo"])
        for node in cluster3.nodes:
            data["cassandra"]["nodes"][node.name]["nodetool"] = [fault_nodetool(Path(node.nodetool), ctl)]
        if edit:
            edit(data)
        return real_stack.write_stack_file(tmp_path / f"stack-{len(list(tmp_path.iterdir()))}.yaml", data)

    make.ctl = ctl
    return make


@pytest.fixture
def live_differs(cluster3, backup3):
    """Live rows = the backup's plus one, so "as before" and "as in the backup" differ."""
    session = cluster3.session()
    session.execute(EXTRA_ROW)
    session.cluster.shutdown()
    before = seed.cluster_fingerprint(cluster3)
    assert before != backup3["rows"]
    yield before
    session = cluster3.session()
    session.execute("DELETE FROM thehive.edgestore WHERE key = 0xdeadbeef")
    session.cluster.shutdown()


def leftovers(cluster3) -> list[str]:
    """Rollback snapshots, journals and staging folders a restore must not leave behind."""
    tag = rollback_tag("thehive")
    found = [str(p) for n in cluster3.nodes for p in Path(n.data_dir).glob(f"thehive/*/snapshots/{tag}")]
    for n in cluster3.nodes:
        staging = Path(n.home) / "staging"
        if staging.exists():
            found += [str(p) for p in staging.iterdir()]
    return found


def thehive_up(real_stack) -> bool:
    return get_status(real_stack.standin_url)[0] == 200


def test_staging_too_small_on_one_node_is_refused_before_any_change(real_stack, cluster3, backup3,
                                                                     fault_stack, tmp_path):
    small = tmp_path / "small-staging"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        victim = cluster3.nodes[1].name
        path = fault_stack(lambda d: d["cassandra"]["nodes"][victim].update(staging_dir=str(small)))
        before, index = seed.cluster_fingerprint(cluster3), seed.index_fingerprint(real_stack.elasticsearch.client())
        with pytest.raises(RestoreRefused) as refused:
            restore(stack=str(path), backup_id=backup3["id"], confirm=True)
        (problem,) = [p for p in refused.value.problems if "staging" in p]
        assert problem.startswith(f"{victim}: staging_dir {small}") and "MiB free" in problem
        assert f"cassandra.nodes.{victim}.staging_dir" in problem  # the fix, named
        assert seed.cluster_fingerprint(cluster3) == before
        assert seed.index_fingerprint(real_stack.elasticsearch.client()) == index
        assert thehive_up(real_stack)
        assert not list(small.iterdir())
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_load_failing_after_the_drop_rolls_back_to_the_live_rows(real_stack, cluster3, backup3,
                                                                  fault_stack, live_differs):
    path = fault_stack()
    (fault_stack.ctl / f"fail-{cluster3.nodes[2].name}").touch()
    index = seed.index_fingerprint(real_stack.elasticsearch.client())
    with pytest.raises(RestoreFailed, match="rolled back: keyspace thehive as before"):
        restore(stack=str(path), backup_id=backup3["id"], confirm=True)
    assert "start" in (fault_stack.ctl / "imports.log").read_text()  # the drop really happened
    assert seed.cluster_fingerprint(cluster3) == live_differs
    assert seed.index_fingerprint(real_stack.elasticsearch.client()) == index
    assert thehive_up(real_stack)
    assert leftovers(cluster3) == []


@pytest.mark.parametrize("mistake", ["replication class", "unknown datacenter", "target keyspace"])
def test_mistakes_are_refused_before_anything_stops(real_stack, cluster3, backup3, fault_stack, mistake):
    before = seed.cluster_fingerprint(cluster3)
    if mistake == "replication class":
        path = fault_stack(lambda d: d["cassandra"]["replication"].update({"class": "NetworkTopologyStrateg"}))
        with pytest.raises(StackConfigError, match="cassandra.replication: replication.class 'NetworkTopologyStrateg'"):
            restore(stack=str(path), backup_id=backup3["id"], confirm=True)
    elif mistake == "unknown datacenter":
        path = fault_stack(lambda d: d["cassandra"].update(
            replication={"class": "NetworkTopologyStrategy", "dc-east": 3}))
        with pytest.raises(RestoreRefused, match="datacenter 'dc-east' is not in the cluster"):
            restore(stack=str(path), backup_id=backup3["id"], confirm=True)
    else:
        path = fault_stack()
        with pytest.raises(RestoreRefused, match="target_keyspace: 'x; DROP KEYSPACE thehive' is not a valid"):
            restore(stack=str(path), backup_id=backup3["id"], components=["cassandra"],
                    target_keyspace="x; DROP KEYSPACE thehive", confirm=True)
    assert seed.cluster_fingerprint(cluster3) == before
    assert thehive_up(real_stack)
    assert not (fault_stack.ctl / "imports.log").exists()


def _journal_exists(stack) -> bool:
    from tasks.rollback import journal_path
    return any(Path(journal_path(stack, n.name, "thehive")).exists() for n in stack.nodes_with("cassandra"))


def _staged_markers(cluster3) -> list[Path]:
    return [p for n in cluster3.nodes for p in (Path(n.home) / "staging").glob("thb-restore-*/*.staged.json")]


def _imports(ctl: Path, word: str) -> int:
    log = ctl / "imports.log"
    return log.read_text().count(f" {word} ") if log.exists() else 0


@pytest.mark.parametrize("phase", ["staging", "after the drop", "mid-load"])
def test_restore_killed_in_each_phase_is_finished_by_running_it_again(
        real_stack, cluster3, backup3, fault_stack, live_differs, phase):
    path = fault_stack()
    stack = load_stack(path)
    ctl = fault_stack.ctl
    if phase != "staging":
        (ctl / "slow").touch()  # each import waits 4 s: time to kill between the drop and the end
    reached = {"staging": lambda: bool(_staged_markers(cluster3)),
               "after the drop": lambda: _imports(ctl, "start") >= 1,
               "mid-load": lambda: _imports(ctl, "done") >= 1}[phase]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    code = f"from flows.restore import restore; restore(stack={str(path)!r}, backup_id={backup3['id']!r}, confirm=True)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not reached():
            assert proc.poll() is None, f"the restore ended (rc {proc.returncode}) before {phase}"
            assert time.monotonic() < deadline, f"the restore never reached {phase}"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        journal = _journal_exists(stack)
    finally:
        if proc.poll() is None:
            proc.kill()
    if phase == "staging":
        assert not journal and seed.cluster_fingerprint(cluster3) == live_differs  # nothing live changed
    else:
        assert journal and not thehive_up(real_stack)  # TheHive left stopped on partial data
        assert seed.cluster_fingerprint(cluster3) != live_differs
    (ctl / "slow").unlink(missing_ok=True)

    report = restore(stack=str(path), backup_id=backup3["id"], confirm=True)  # the same command
    assert report["outcome"] == "complete" and report["thehive"] == "healthy"
    assert seed.cluster_fingerprint(cluster3) == backup3["rows"]
    assert seed.index_fingerprint(real_stack.elasticsearch.client()) == backup3["index"]
    assert thehive_up(real_stack)
    assert leftovers(cluster3) == [] and not _journal_exists(stack)
