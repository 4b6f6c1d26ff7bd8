"""tasks/services.py, tasks/folders.py, tasks/hooks.py and flows/lifecycle.py (plain threads)
without the real stack.

systemd and a Docker engine cannot run here, so the tests named ``..._recording_stand_ins`` put
recording ``systemctl``, ``sudo``, ``docker`` and ``nodetool`` scripts on PATH (local nodes) and
assert the exact commands issued and their order. The ``command`` manager and everything else is
exercised on the real stack by tests/test_cold.py.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from config.model import Stack
from flows import lifecycle
from tasks import folders, hooks, services
from tasks.hosts import LocalHost

ADDRESSES = {"n1": "10.9.0.1", "n2": "10.9.0.2", "n3": "10.9.0.3"}


def stack_of(tmp_path: Path, managers: dict[str, dict], **extra) -> Stack:
    nodes = [{"name": n, "address": a, "transport": "local",
              "roles": ["cassandra"] + (["elasticsearch", "thehive", "files"] if n == "n1" else [])}
             for n, a in ADDRESSES.items()]
    data = {
        "name": "unit",
        "nodes": nodes,
        "services": [
            {"name": "thehive", "nodes": ["n1"], "manager": managers["thehive"],
             "health_url": "http://10.9.0.1:9000/api/status"},
            {"name": "elasticsearch", "nodes": ["n1"], "manager": managers["elasticsearch"]},
            {"name": "cassandra", "nodes": list(ADDRESSES), "manager": managers["cassandra"]},
        ],
        "cassandra": {"node_defaults": {"nodetool": [str(tmp_path / "bin" / "nodetool")],
                                        "data_dirs": ["/var/lib/cassandra/data"],
                                        "commitlog_dir": "/var/lib/cassandra/commitlog"}},
        "elasticsearch": {"url": "http://10.9.0.1:9200"},
        "attachments": {"kind": "folder", "node": "n1", "path": "/opt/thp/thehive/files"},
        "repository": {"kind": "local", "path": str(tmp_path / "repo")},
        **extra,
    }
    return Stack.model_validate(data)


SYSTEMD = {"thehive": {"kind": "systemd", "unit": "thehive", "sudo": True},
           "elasticsearch": {"kind": "systemd", "unit": "elasticsearch", "sudo": True},
           "cassandra": {"kind": "systemd", "unit": "cassandra", "sudo": True}}
COMPOSE = {name: {"kind": "docker-compose", "compose_file": "/opt/thp/docker-compose.yml", "service": name}
           for name in ("thehive", "elasticsearch", "cassandra")}


@pytest.fixture
def recording(tmp_path, monkeypatch):
    """Stand-ins for systemctl, sudo, docker and nodetool that log every call and keep a state
    folder: one file per node and running unit, ``<node>-<unit>``. Every command a local node
    runs carries its name in $THB_NODE: three nodes stopping Cassandra at once must not see each
    other's unit as stopped (a global state skipped a drain now and then)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    log = tmp_path / "calls.log"
    scripts = {
        "sudo": f"""
            echo "sudo $*" >> {log}
            [ "$1" = -n ] && shift
            exec "$@"
            """,
        "systemctl": f"""
            echo "systemctl $*" >> {log}
            case "$1" in
              is-active) [ -f {state}/"$THB_NODE-$3" ] ;;
              start) touch {state}/"$THB_NODE-$2" ;;
              stop) rm -f {state}/"$THB_NODE-$2" ;;
            esac
            """,
        "docker": f"""
            echo "docker $*" >> {log}
            for last; do :; done
            case " $* " in
              *" up -d "*) touch {state}/"$THB_NODE-$last" ;;
              *" stop "*) rm -f {state}/"$THB_NODE-$last" ;;
              *" ps "*) [ -f {state}/"$THB_NODE-$last" ] && echo 4f2a9c ;;
            esac
            exit 0
            """,
        "nodetool": f"""
            echo "nodetool $*" >> {log}
            if [ "$1" = status ]; then
              for a in {' '.join(ADDRESSES.values())}; do echo "UN  $a  1 MiB  1  ?  id  rack1"; done
            fi
            """,
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
        path.chmod(0o755)
    for node in ADDRESSES:
        (state / f"{node}-cassandra").touch()
    for unit in ("thehive", "elasticsearch"):
        (state / f"n1-{unit}").touch()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    real_run = LocalHost.run
    monkeypatch.setattr(LocalHost, "run", lambda self, argv, **kw: real_run(
        self, ["env", f"THB_NODE={self.name}", *argv], **kw))
    # Endpoints are checked from the runner: pretend they follow the units' state.
    unit_of_port = {9042: "cassandra", 9200: "elasticsearch", 9000: "thehive"}
    node_of = {address: node for node, address in ADDRESSES.items()}
    monkeypatch.setattr(services, "port_open", lambda host, port, timeout=2.0: (
        state / f"{node_of[host]}-{unit_of_port[port]}").exists())
    monkeypatch.setattr(services, "es_health",
                        lambda stack: "green" if (state / "n1-elasticsearch").exists() else None)
    monkeypatch.setattr(services, "http_status",
                        lambda url, timeout=5.0: 200 if (state / "n1-thehive").exists() else 0)
    monkeypatch.setattr(services, "POLL_SECONDS", 0.05)

    def calls(skip_status: bool = True) -> list[str]:
        lines = log.read_text().splitlines() if log.exists() else []
        if skip_status:
            lines = [c for c in lines if not any(w in c for w in ("is-active", " ps ", "nodetool status",
                                                                  "sudo -n systemctl"))]
        return lines

    return calls


def test_action_argv_systemd_with_sudo(tmp_path):
    st = stack_of(tmp_path, SYSTEMD)
    svc = st.service("cassandra")
    assert services.action_argv(svc, "n2", "stop") == ["sudo", "-n", "systemctl", "stop", "cassandra"]
    assert services.action_argv(svc, "n2", "start") == ["sudo", "-n", "systemctl", "start", "cassandra"]
    assert services.action_argv(svc, "n2", "status") == ["systemctl", "is-active", "--quiet", "cassandra"]


def test_action_argv_docker_compose_names_the_file(tmp_path):
    managers = dict(COMPOSE)
    managers["thehive"] = {**COMPOSE["thehive"], "project_dir": "/opt/thp"}
    st = stack_of(tmp_path, managers)
    es = st.service("elasticsearch")
    assert services.action_argv(es, "n1", "stop") == [
        "docker", "compose", "-f", "/opt/thp/docker-compose.yml", "stop", "elasticsearch"]
    assert services.action_argv(es, "n1", "start") == [
        "docker", "compose", "-f", "/opt/thp/docker-compose.yml", "up", "-d", "elasticsearch"]
    assert services.action_argv(es, "n1", "status") == [
        "docker", "compose", "-f", "/opt/thp/docker-compose.yml", "ps", "--status", "running", "--quiet",
        "elasticsearch"]
    assert services.action_argv(st.service("thehive"), "n1", "stop") == [
        "docker", "compose", "-f", "/opt/thp/docker-compose.yml", "--project-directory", "/opt/thp",
        "stop", "thehive"]


def test_action_argv_command_replaces_node(tmp_path):
    cmd = {"kind": "command", "start": ["/srv/{node}/bin/start", "--name={node}"],
           "stop": ["/srv/{node}/bin/stop"], "status": ["/srv/{node}/bin/status"]}
    st = stack_of(tmp_path, {"thehive": cmd, "elasticsearch": cmd, "cassandra": cmd})
    svc = st.service("cassandra")
    assert services.action_argv(svc, "n3", "start") == ["/srv/n3/bin/start", "--name=n3"]
    assert services.action_argv(svc, "n3", "stop") == ["/srv/n3/bin/stop"]


def test_systemd_stop_and_start_order_with_recording_stand_ins(tmp_path, recording):
    st = stack_of(tmp_path, SYSTEMD)
    events: list[dict] = []
    lifecycle.stop_in_order(st, events, plain=True)
    calls = recording()
    # Units are stopped through sudo; the stand-in sudo logs the call it runs.
    stops = [c for c in calls if c.startswith("systemctl stop")]
    assert stops[:2] == ["systemctl stop thehive", "systemctl stop elasticsearch"]
    assert stops[2:] == ["systemctl stop cassandra"] * 3
    assert calls.index("systemctl stop elasticsearch") > calls.index("systemctl stop thehive")
    drains = [i for i, c in enumerate(calls) if c.startswith("nodetool") and "drain" in c]
    assert len(drains) == 3 and max(drains) < len(calls)
    assert all(calls[i].endswith("drain") for i in drains)
    assert [e["event"] for e in events if e["service"] != "cassandra"] == [
        "stop", "stopped", "stop", "stopped"]

    events, errors = lifecycle.start_all(st)
    assert errors == []
    starts = [c for c in recording() if c.startswith("systemctl start")]
    assert starts == ["systemctl start cassandra"] * 3 + ["systemctl start elasticsearch",
                                                          "systemctl start thehive"]
    assert [e["service"] for e in events if e["event"] == "healthy"] == list(services.START_ORDER)


def test_systemd_sudo_prefix_with_recording_stand_ins(tmp_path, recording):
    st = stack_of(tmp_path, SYSTEMD)
    lifecycle.stop_in_order(st, [], plain=True)
    raw = recording(skip_status=False)
    assert "sudo -n systemctl stop thehive" in raw
    assert not [c for c in raw if c.startswith("sudo") and "is-active" in c]


def test_docker_compose_stop_and_start_with_recording_stand_ins(tmp_path, recording):
    st = stack_of(tmp_path, COMPOSE)
    lifecycle.stop_in_order(st, [], plain=True)
    f = "docker compose -f /opt/thp/docker-compose.yml"
    stops = [c for c in recording() if c.startswith("docker")]
    assert stops == [f"{f} stop thehive", f"{f} stop elasticsearch"] + [f"{f} stop cassandra"] * 3
    lifecycle.start_all(st)
    ups = [c for c in recording() if " up " in c]
    assert ups == [f"{f} up -d cassandra"] * 3 + [f"{f} up -d elasticsearch", f"{f} up -d thehive"]


def test_stop_waits_until_status_says_stopped(tmp_path, recording, monkeypatch):
    """A stop command that returns at once while the unit lingers: the wait goes on polling."""
    st = stack_of(tmp_path, SYSTEMD)
    state = tmp_path / "state"
    polls = {"n": 0}
    original = services.is_running

    def lingering(host, service, node):
        polls["n"] += 1
        if polls["n"] == 3:
            (state / "lingering").unlink(missing_ok=True)
        return (state / "lingering").exists() or original(host, service, node)

    (state / "lingering").touch()
    monkeypatch.setattr(services, "is_running", lingering)
    events = services.stop_node(st, "thehive", "n1")
    assert polls["n"] >= 3 and events[-1]["event"] == "stopped"


def test_stop_times_out_when_the_service_never_stops(tmp_path, recording, monkeypatch):
    st = stack_of(tmp_path, {**SYSTEMD, "thehive": {**SYSTEMD["thehive"]}})
    st = st.model_copy(update={"services": [s.model_copy(update={"stop_timeout": 0.3})
                                            for s in st.services]})
    monkeypatch.setattr(services, "is_running", lambda host, service, node: True)
    with pytest.raises(services.ServiceTimeout, match="thehive is stopped on n1"):
        services.stop_node(st, "thehive", "n1")


def test_declared_paths_adds_what_a_consistent_backup_needs(tmp_path):
    st = stack_of(tmp_path, COMPOSE)
    specs, notes = folders.declared_paths(st)
    by = {(s.node, s.service, s.name): s.path for s in specs}
    # The compose folder (docker-compose.yml, .env, volumes) once per node, under the first service.
    assert by[("n1", "thehive", "compose-project")] == "/opt/thp"
    assert by[("n2", "cassandra", "compose-project")] == "/opt/thp"
    # The attachments folder lies inside the compose folder on n1: not copied twice.
    assert ("n1", "thehive", "attachments") not in by
    # Cassandra's data dirs and commitlog on n2 are not under /opt/thp here: added.
    assert by[("n2", "cassandra", "data")] == "/var/lib/cassandra/data"
    assert by[("n2", "cassandra", "commitlog")] == "/var/lib/cassandra/commitlog"
    assert any("elasticsearch declares no paths" in n for n in notes) is False  # covered by compose
    assert [s for s in specs if s.node == "n1" and s.service == "elasticsearch"] == []


def test_declared_paths_expands_node_and_keeps_declared_names(tmp_path):
    cmd = {"kind": "command", "start": ["s"], "stop": ["s"], "status": ["s"]}
    st = stack_of(tmp_path, {"thehive": cmd, "elasticsearch": cmd, "cassandra": cmd})
    data = st.model_dump()
    data["services"][2]["paths"] = [{"name": "data", "path": "/srv/{node}/data"}]
    data["services"][0]["paths"] = [{"name": "files", "path": "/opt/thp/thehive"}]
    st = Stack.model_validate(data)
    specs, notes = folders.declared_paths(st)
    by = {(s.node, s.service, s.name): (s.path, s.auto) for s in specs}
    assert by[("n3", "cassandra", "data")] == ("/srv/n3/data", False)
    # The stack's data_dirs are elsewhere: added under another name, never overwriting "data".
    assert by[("n3", "cassandra", "data-auto")] == ("/var/lib/cassandra/data", True)
    assert ("n1", "thehive", "attachments") not in by  # inside the declared /opt/thp/thehive
    assert any("elasticsearch declares no paths" in n for n in notes)
    assert specs[0].key("cold-20260101-000000-abcd", "zstd") == \
        "cold-20260101-000000-abcd/cold/n1/thehive/files.tar.zst"


def test_service_paths_and_hooks_are_validated(tmp_path):
    cmd = {"kind": "command", "start": ["s"], "stop": ["s"], "status": ["s"]}
    st = stack_of(tmp_path, {"thehive": cmd, "elasticsearch": cmd, "cassandra": cmd})
    data = st.model_dump()
    data["services"][0]["paths"] = [{"name": "x", "path": "relative/path"}]
    with pytest.raises(ValueError, match="not an absolute path"):
        Stack.model_validate(data)
    data["services"][0]["paths"] = [{"name": "x", "path": "/a"}, {"name": "x", "path": "/b"}]
    with pytest.raises(ValueError, match="duplicate path name"):
        Stack.model_validate(data)
    data["services"][0]["paths"] = []
    data["hooks"] = {"after_stop": [{"node": "nowhere", "argv": ["true"]}]}
    with pytest.raises(ValueError, match=r"hooks.after_stop\[0\].node: unknown node 'nowhere'"):
        Stack.model_validate(data)


def test_hook_argv_placeholders(tmp_path):
    cmd = {"kind": "command", "start": ["s"], "stop": ["s"], "status": ["s"]}
    st = stack_of(tmp_path, {"thehive": cmd, "elasticsearch": cmd, "cassandra": cmd},
                  hooks={"after_stop": [{"node": "n2", "argv": ["snap", "--tag={backup_id}", "{node}",
                                                                 "{stack}"]}]})
    hook = st.hooks.after_stop[0]
    assert hooks.hook_argv(st, hook, "cold-x") == ["snap", "--tag=cold-x", "n2", "unit"]


def test_one_ordering_plan_narrowed_to_services_and_nodes(tmp_path):
    st = stack_of(tmp_path, SYSTEMD)
    Step = services.Step
    assert services.stop_plan(st) == [Step("stop", "thehive", ("n1",)),
                                      Step("stop", "elasticsearch", ("n1",)),
                                      Step("stop", "cassandra", ("n1", "n2", "n3"))]
    assert services.start_plan(st) == [
        Step("start", "cassandra", ("n1",)), Step("start", "cassandra", ("n2", "n3")),
        Step("healthy", "cassandra"),
        Step("start", "elasticsearch", ("n1",)), Step("healthy", "elasticsearch"),
        Step("start", "thehive", ("n1",)), Step("healthy", "thehive")]
    # One node of one service (node rebuild); the order between services stays.
    assert services.stop_plan(st, ["cassandra"], ["n2"]) == [Step("stop", "cassandra", ("n2",))]
    assert services.start_plan(st, ["cassandra"], ["n2"]) == [Step("start", "cassandra", ("n2",)),
                                                             Step("healthy", "cassandra")]
    assert [s.service for s in services.stop_plan(st, ["cassandra", "thehive"], ["n1"])] == [
        "thehive", "cassandra"]
    with pytest.raises(services.ServiceError, match="no service 'kibana'"):
        services.stop_plan(st, ["kibana"])


def test_a_service_that_does_not_stop_stops_the_plan_with_recording_stand_ins(tmp_path, recording,
                                                                              monkeypatch):
    """Plain threads run the same plan as Prefect: TheHive does not stop, so Elasticsearch and
    Cassandra are left running, and the error names the service and node."""
    st = stack_of(tmp_path, SYSTEMD)
    st = st.model_copy(update={"services": [s.model_copy(update={"stop_timeout": 0.3})
                                            for s in st.services]})
    original = services.is_running
    monkeypatch.setattr(services, "is_running", lambda host, service, node: service.name == "thehive"
                        or original(host, service, node))
    events: list[dict] = []
    with pytest.raises(services.ServiceError, match="could not stop thehive on n1: ServiceTimeout"):
        lifecycle.stop_in_order(st, events, plain=True)
    assert [c for c in recording() if c.startswith("systemctl stop")] == ["systemctl stop thehive"]
    assert [e["event"] for e in events] == ["stop-failed"]


def test_start_of_one_node_with_recording_stand_ins(tmp_path, recording):
    st = stack_of(tmp_path, SYSTEMD)
    events: list[dict] = []
    lifecycle.stop_in_order(st, events, only=["cassandra"], nodes=["n2"], plain=True)
    calls = recording()
    assert [c for c in calls if c.startswith("systemctl stop")] == ["systemctl stop cassandra"]
    assert len([c for c in calls if "drain" in c]) == 1
    assert lifecycle.start_in_order(st, events, only=["cassandra"], nodes=["n2"], plain=True) == []
    assert [(e["event"], e["node"]) for e in events if e["event"] in ("stopped", "started", "healthy")] == [
        ("stopped", "n2"), ("started", "n2"), ("healthy", None)]


def test_compose_status_without_the_compose_file_asks_docker_by_labels(tmp_path, monkeypatch):
    """A lost compose folder (what a cold restore brings back): ``docker compose -f`` fails, so
    whether the service runs is asked by the Compose labels; a failure with the file present is
    still an error."""
    from tasks.hosts import LocalHost

    bin_dir, log, running = tmp_path / "bin", tmp_path / "calls.log", tmp_path / "running"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$*" >> {log}
        [ "$1" = compose ] && {{ [ -f "$3" ] || {{ echo "open $3: no such file" >&2; exit 1; }}; exit 9; }}
        [ -f {running} ] && echo 4f2a9c
        exit 0
        """))
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    project = tmp_path / "thp"
    managers = {n: {"kind": "docker-compose", "compose_file": str(project / "docker-compose.yml"),
                    "service": n} for n in ("thehive", "elasticsearch", "cassandra")}
    svc = stack_of(tmp_path, managers).service("thehive")
    assert svc is not None
    host = LocalHost("n1")
    assert services.is_running(host, svc, "n1") is False
    running.touch()
    assert services.is_running(host, svc, "n1") is True
    assert log.read_text().splitlines()[-1] == (
        f"ps --quiet --filter label=com.docker.compose.project.working_dir={project} "
        "--filter label=com.docker.compose.service=thehive")
    project.mkdir()
    (project / "docker-compose.yml").write_text("services: {}\n")
    with pytest.raises(services.ServiceError, match="cannot ask docker compose"):
        services.is_running(host, svc, "n1")  # the file is there: its exit 9 is an error
