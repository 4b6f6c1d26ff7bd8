"""Services of the stack: stop, start, wait until really stopped or healthy, one node at a time, and
the one plan that orders them (``stop_plan``/``start_plan``). flows/lifecycle.py runs the plan, as
Prefect tasks or on plain threads; hooks are tasks/hooks.py, the cold-backup folders tasks/folders.py.

Plain functions over a Stack, with thin Prefect tasks at the end. Every action returns the events it
went through (``{"t", "event", "service", "node", ...}``, wall-clock seconds) so that a flow can
prove the order and the waits from data rather than from log text.

Commands per manager kind (the argv is run on the node through its Host):

==============  ===========================================  ====================================
manager          stop / start                                 running?
==============  ===========================================  ====================================
systemd          ``[sudo -n] systemctl stop|start <unit>``    ``systemctl is-active --quiet <unit>``
docker-compose   ``docker compose -f <file> stop <service>``  ``docker compose -f <file> ps
                 ``docker compose -f <file> up -d <service>``   --status running --quiet <service>``
                                                                (running = non-empty output; no
                                                                compose file: ``docker ps`` by the
                                                                Compose labels)
command          the configured argv, ``{node}`` = node name  the ``status`` argv exits 0
==============  ===========================================  ====================================

"Really stopped" = the status check says not running AND the service's endpoint on that node is
closed (Cassandra: CQL port of the node; Elasticsearch / TheHive: the port of their URL when it
points at the node, or when the service has a single node). "Started and healthy" = Cassandra: every
node's ``nodetool status`` shows every Cassandra node UN and the CQL ports answer; Elasticsearch:
cluster health yellow or green; TheHive: ``health_url`` answers 200 (status command without one).
"""
from __future__ import annotations

import posixpath
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from prefect import task
from prefect.cache_policies import NO_CACHE

from config.model import CommandManager, DockerCompose, Service, Stack, Systemd
from tasks import cassandra, elasticsearch
from tasks.hosts import Host, HostError, host_for
from tasks.retry import side_effect_task

Action = Literal["start", "stop", "status"]
STOP_ORDER = ("thehive", "elasticsearch", "cassandra")
START_ORDER = ("cassandra", "elasticsearch", "thehive")
POLL_SECONDS = 1.0


class ServiceError(Exception):
    """A service could not be stopped, started or checked. Never retried blindly."""

    transient = False


class ServiceTimeout(ServiceError):
    """A wait ran out of time (not transient: a retry would only double the wait)."""


def event(what: str, service: str | None, node: str | None = None, **extra) -> dict:
    return {"t": round(time.time(), 3), "event": what, "service": service, "node": node, **extra}


# -- commands per manager ------------------------------------------------------------------------
def expand(argv: list[str], node: str) -> list[str]:
    return [a.replace("{node}", node) for a in argv]


def _compose(m: DockerCompose) -> list[str]:
    argv = ["docker", "compose", "-f", m.compose_file]
    if m.project_dir:
        argv += ["--project-directory", m.project_dir]
    return argv


def action_argv(service: Service, node: str, action: Action) -> list[str]:
    """The exact command that starts, stops or checks ``service`` on ``node``."""
    m = service.manager
    if isinstance(m, Systemd):
        if action == "status":
            return ["systemctl", "is-active", "--quiet", m.unit]
        return [*(["sudo", "-n"] if m.sudo else []), "systemctl", action, m.unit]
    if isinstance(m, DockerCompose):
        if action == "start":
            return [*_compose(m), "up", "-d", m.service]
        if action == "stop":
            return [*_compose(m), "stop", m.service]
        return [*_compose(m), "ps", "--status", "running", "--quiet", m.service]
    if isinstance(m, CommandManager):
        return expand(getattr(m, action), node)
    raise TypeError(f"unknown manager {m!r}")  # pragma: no cover - the model's union


def compose_labels_argv(m: DockerCompose) -> list[str]:
    """Running containers of the service, by the labels Compose puts on them: needs no compose
    file, so it answers when the compose folder is lost (the one a cold restore brings back)."""
    folder = m.project_dir or posixpath.dirname(m.compose_file) or "/"
    return ["docker", "ps", "--quiet", "--filter", f"label=com.docker.compose.project.working_dir={folder}",
            "--filter", f"label=com.docker.compose.service={m.service}"]


def is_running(host: Host, service: Service, node: str) -> bool:
    r = host.run(host.privileged(action_argv(service, node, "status")), timeout=120, check=False)
    if isinstance(service.manager, DockerCompose):
        m = service.manager
        if r.exit_code != 0 and host.run(["test", "-e", m.compose_file], timeout=60,
                                         check=False).exit_code != 0:
            r = host.run(compose_labels_argv(m), timeout=120, check=False)
        if r.exit_code != 0:
            raise ServiceError(f"{node}: cannot ask docker compose about {service.manager.service}: "
                               f"{r.stderr.decode(errors='replace').strip()[-500:]}")
        return bool(r.text.strip())
    return r.exit_code == 0


# -- endpoints, seen from where the flow runs ----------------------------------------------------
def port_open(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 5.0) -> int:
    """The HTTP status of a GET, or 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, ValueError):
        return 0


def _url_endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def node_endpoints(stack: Stack, service: Service, node: str) -> list[tuple[str, int]]:
    """Ports that must be closed once ``service`` is stopped on ``node``."""
    address = stack.node(node).address
    if service.name == "cassandra":
        return [(address, stack.cassandra.cql_port)]
    url = service.health_url if service.name == "thehive" else (
        stack.elasticsearch.url if stack.elasticsearch else None)
    if not url:
        return []
    host, port = _url_endpoint(url)
    return [(host, port)] if host == address or len(service.nodes) == 1 else []


def es_health(stack: Stack) -> str | None:
    """Cluster health colour, or None when Elasticsearch does not answer."""
    if stack.elasticsearch is None:
        return None
    try:
        client = elasticsearch.es_client(stack.elasticsearch).options(request_timeout=10, max_retries=0)
        try:
            return elasticsearch.health(client)
        finally:
            client.close()
    except Exception:
        return None


def wait_for(check: Callable[[], bool], what: str, timeout: float, interval: float = POLL_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise ServiceTimeout(f"timed out after {timeout:.0f}s waiting until {what}")
        time.sleep(interval)


# -- stop / start one node -----------------------------------------------------------------------
def _service(stack: Stack, name: str) -> Service:
    svc = stack.service(name)
    if svc is None:
        raise ServiceError(f"the stack declares no service {name!r}")
    return svc


def stop_node(stack: Stack, service: str, node: str) -> list[dict]:
    """Stop ``service`` on ``node`` (``nodetool drain`` first for Cassandra) and wait until the
    status check fails and its endpoint is closed."""
    svc = _service(stack, service)
    events: list[dict] = []
    endpoints = node_endpoints(stack, svc, node)
    with host_for(stack, node) as host:
        if service == "cassandra" and is_running(host, svc, node):
            settings = stack.cassandra.settings_for(node)
            events.append(event("drain", service, node))
            try:
                cassandra.nodetool(host, settings, "drain", timeout=svc.stop_timeout)
                events.append(event("drained", service, node))
            except HostError as exc:  # stopping still matters more; the commitlog is saved too
                events.append(event("drain-failed", service, node, error=str(exc)[-500:]))
        events.append(event("stop", service, node, argv=action_argv(svc, node, "stop")))
        host.run(host.privileged(action_argv(svc, node, "stop")), timeout=svc.stop_timeout)
        wait_for(lambda: not is_running(host, svc, node)
                 and not any(port_open(h, p) for h, p in endpoints),
                 f"{service} is stopped on {node} (status fails, "
                 f"{', '.join(f'{h}:{p}' for h, p in endpoints) or 'no endpoint'} closed)",
                 svc.stop_timeout)
    events.append(event("stopped", service, node, closed=[f"{h}:{p}" for h, p in endpoints]))
    return events


def start_node(stack: Stack, service: str, node: str) -> list[dict]:
    """Start ``service`` on ``node`` and wait until its status check succeeds (Cassandra: until
    the node sees itself UN and answers on its CQL port)."""
    svc = _service(stack, service)
    events = [event("start", service, node, argv=action_argv(svc, node, "start"))]
    with host_for(stack, node) as host:
        host.run(host.privileged(action_argv(svc, node, "start")), timeout=svc.start_timeout)
        wait_for(lambda: is_running(host, svc, node), f"{service} runs on {node}", svc.start_timeout)
        if service == "cassandra":
            address = stack.node(node).address
            settings = stack.cassandra.settings_for(node)

            def up() -> bool:
                if not is_running(host, svc, node):  # it died starting: no point waiting
                    raise ServiceError(f"cassandra on {node} stopped while starting")
                return (_states(host, settings).get(address) == "UN"
                        and port_open(address, stack.cassandra.cql_port))

            wait_for(up,
                     f"cassandra on {node} is UN and answers on {address}:{stack.cassandra.cql_port}",
                     svc.start_timeout, interval=2.0)
    events.append(event("started", service, node))
    return events


def _states(host: Host, settings) -> dict[str, str]:
    try:
        return cassandra.node_states(host, settings)
    except (HostError, cassandra.CassandraError):
        return {}


def check_healthy(stack: Stack, service: str) -> str | None:
    """None when ``service`` is healthy, else what is wrong (one probe, no wait)."""
    svc = _service(stack, service)
    if service == "cassandra":
        expected = {stack.node(n).address for n in svc.nodes}
        for n in svc.nodes:
            with host_for(stack, n) as host:
                states = _states(host, stack.cassandra.settings_for(n))
            bad = sorted(a for a in expected if states.get(a) != "UN")
            if bad:
                return f"nodetool status on {n}: not UN: {', '.join(bad)}"
            address = stack.node(n).address
            if not port_open(address, stack.cassandra.cql_port):
                return f"{address}:{stack.cassandra.cql_port} closed"
        return None
    if service == "elasticsearch":
        colour = es_health(stack)
        return None if colour in ("yellow", "green") else f"cluster health {colour or 'unreachable'}"
    if svc.health_url:
        code = http_status(svc.health_url)
        return None if code == 200 else f"{svc.health_url} answered {code or 'nothing'}"
    for n in svc.nodes:
        with host_for(stack, n) as host:
            if not is_running(host, svc, n):
                return f"not running on {n}"
    return None


def wait_healthy(stack: Stack, service: str) -> list[dict]:
    svc = _service(stack, service)
    last: list[str | None] = [None]

    def healthy() -> bool:
        last[0] = check_healthy(stack, service)
        return last[0] is None

    try:
        wait_for(healthy, f"{service} is healthy", svc.start_timeout, interval=2.0)
    except ServiceTimeout as exc:
        raise ServiceTimeout(f"{exc}; last: {last[0]}") from None
    return [event("healthy", service)]


def running_services(stack: Stack) -> dict[str, list[str]]:
    """{service: [nodes where it runs]} for every declared service."""
    running: dict[str, list[str]] = {}
    for svc in stack.services:
        for n in svc.nodes:
            with host_for(stack, n) as host:
                if is_running(host, svc, n):
                    running.setdefault(svc.name, []).append(n)
    return running


def ordered(stack: Stack, order: tuple[str, ...]) -> list[Service]:
    return [s for name in order if (s := stack.service(name)) is not None]


def start_batches(service: Service) -> list[list[str]]:
    """Cassandra's first declared node (list a seed first) starts alone, the others together."""
    if service.name == "cassandra" and len(service.nodes) > 1:
        return [service.nodes[:1], service.nodes[1:]]
    return [list(service.nodes)]


# -- the one stop/start ordering plan --------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One step of a stop or start plan: ``nodes`` of ``service`` at once (``healthy``: the
    service as a whole, no nodes). Every executor (Prefect tasks, plain threads) runs these."""

    action: Literal["stop", "start", "healthy"]
    service: str
    nodes: tuple[str, ...] = ()


def _selected(stack: Stack, order: tuple[str, ...], only: Iterable[str] | None,
              nodes: Iterable[str] | None) -> list[tuple[Service, list[str]]]:
    wanted = None if only is None else set(only)
    on = None if nodes is None else set(nodes)
    unknown = sorted((wanted or set()) - {s.name for s in stack.services})
    if unknown:
        raise ServiceError(f"the stack declares no service {', '.join(map(repr, unknown))}")
    return [(s, [n for n in s.nodes if on is None or n in on]) for s in ordered(stack, order)
            if wanted is None or s.name in wanted]


def stop_plan(stack: Stack, only: Iterable[str] | None = None,
              nodes: Iterable[str] | None = None) -> list[Step]:
    """TheHive, then Elasticsearch, then Cassandra; all nodes of one service at once.
    ``only``/``nodes`` narrow it to some services or nodes (the order stays)."""
    return [Step("stop", s.name, tuple(ns)) for s, ns in _selected(stack, STOP_ORDER, only, nodes) if ns]


def start_plan(stack: Stack, only: Iterable[str] | None = None,
               nodes: Iterable[str] | None = None) -> list[Step]:
    """Cassandra (first node alone, then the others), Elasticsearch, TheHive; each service waited
    healthy before the next one starts."""
    steps: list[Step] = []
    for svc, ns in _selected(stack, START_ORDER, only, nodes):
        if not ns:
            continue
        for batch in start_batches(svc.model_copy(update={"nodes": ns})):
            steps.append(Step("start", svc.name, tuple(batch)))
        steps.append(Step("healthy", svc.name))
    return steps


# -- Prefect tasks ---------------------------------------------------------------------------------
@side_effect_task(name="stop service", task_run_name="stop {service} on {node}")
def stop_node_task(stack: Stack, service: str, node: str) -> list[dict]:
    return stop_node(stack, service, node)


@side_effect_task(name="start service", task_run_name="start {service} on {node}")
def start_node_task(stack: Stack, service: str, node: str) -> list[dict]:
    return start_node(stack, service, node)


@task(name="wait healthy", task_run_name="wait until {service} is healthy", cache_policy=NO_CACHE)
def wait_healthy_task(stack: Stack, service: str) -> list[dict]:
    return wait_healthy(stack, service)
