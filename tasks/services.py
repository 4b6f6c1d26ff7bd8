"""Services of the stack: stop, start, wait until really stopped or healthy; their folders copied
out (cold backup); putting them back is tasks/restore_folders.py.

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
                                                                (running = non-empty output)
command          the configured argv, ``{node}`` = node name  the ``status`` argv exits 0
==============  ===========================================  ====================================

"Really stopped" = the status check says not running AND the service's endpoint on that node is
closed (Cassandra: CQL port of the node; Elasticsearch / TheHive: the port of their URL when it
points at the node, or when the service has a single node). "Started and healthy" = Cassandra: every
node's ``nodetool status`` shows every Cassandra node UN and the CQL ports answer; Elasticsearch:
cluster health yellow or green; TheHive: ``health_url`` answers 200 (status command without one).
"""
from __future__ import annotations

import json
import posixpath
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal
from urllib.parse import urlsplit

from prefect import task
from prefect.cache_policies import NO_CACHE

from config.model import (
    CommandManager, DockerCompose, FolderAttachments, Hook, Service, Stack, Systemd,
)
from tasks import cassandra, elasticsearch
from tasks.archive import EXTENSIONS, Compression, TarStats, pack
from tasks.hosts import Host, HostError, host_for
from tasks.manifest import ObjectEntry
from tasks.retry import RETRYING
from tasks.repositories import Repository, open_repository
from tasks.transfer import store

Action = Literal["start", "stop", "status"]
STOP_ORDER = ("thehive", "elasticsearch", "cassandra")
START_ORDER = ("cassandra", "elasticsearch", "thehive")
#: The manifest's component of a service's folders.
COMPONENT = {"cassandra": "cassandra", "elasticsearch": "elasticsearch", "thehive": "files"}
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


def is_running(host: Host, service: Service, node: str) -> bool:
    r = host.run(action_argv(service, node, "status"), timeout=120, check=False)
    if isinstance(service.manager, DockerCompose):
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
        host.run(action_argv(svc, node, "stop"), timeout=svc.stop_timeout)
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
        host.run(action_argv(svc, node, "start"), timeout=svc.start_timeout)
        wait_for(lambda: is_running(host, svc, node), f"{service} runs on {node}", svc.start_timeout)
        if service == "cassandra":
            address = stack.node(node).address
            settings = stack.cassandra.settings_for(node)
            wait_for(lambda: _states(host, settings).get(address) == "UN"
                     and port_open(address, stack.cassandra.cql_port),
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


def stop_all(stack: Stack) -> list[dict]:
    """Stop every service in order, without Prefect (tests, hooks). Raises on the first failure."""
    events: list[dict] = []
    from concurrent.futures import ThreadPoolExecutor

    for svc in ordered(stack, STOP_ORDER):
        with ThreadPoolExecutor(len(svc.nodes)) as pool:
            for result in pool.map(lambda n, s=svc.name: stop_node(stack, s, n), svc.nodes):
                events += result
    return events


def start_all(stack: Stack) -> tuple[list[dict], list[str]]:
    """Start every service in order and wait for health, without Prefect (cancellation hooks).
    Never raises: returns the events and what went wrong."""
    from concurrent.futures import ThreadPoolExecutor

    events: list[dict] = []
    errors: list[str] = []
    for svc in ordered(stack, START_ORDER):
        for batch in start_batches(svc):
            with ThreadPoolExecutor(len(batch)) as pool:
                futures = {n: pool.submit(start_node, stack, svc.name, n) for n in batch}
                for n, f in futures.items():
                    try:
                        events += f.result()
                    except Exception as exc:
                        errors.append(f"start {svc.name} on {n}: {exc}")
        try:
            events += wait_healthy(stack, svc.name)
        except Exception as exc:
            errors.append(f"{svc.name} not healthy: {exc}")
    return events, errors


# -- hooks ---------------------------------------------------------------------------------------
def hook_argv(stack: Stack, hook: Hook, backup_id: str) -> list[str]:
    return [a.replace("{node}", hook.node).replace("{backup_id}", backup_id).replace("{stack}", stack.name)
            for a in hook.argv]


def run_hook(stack: Stack, step: str, index: int, backup_id: str) -> list[dict]:
    hook: Hook = getattr(stack.hooks, step)[index]
    argv = hook_argv(stack, hook, backup_id)
    started = event("hook", None, hook.node, step=step, argv=argv)
    with host_for(stack, hook.node) as host:
        result = host.run(argv, timeout=hook.timeout)
    return [started, event("hook-done", None, hook.node, step=step,
                           output=result.text.strip()[-2000:])]


# -- the folders of a cold backup ----------------------------------------------------------------
@dataclass(frozen=True)
class PathSpec:
    """One folder of one service on one node, and where its archive goes."""

    service: str
    node: str
    name: str
    path: str
    auto: bool = False  # added by the tool, not declared

    def prefix(self, backup_id: str) -> str:
        return f"{backup_id}/cold/{self.node}/{self.service}/{self.name}"

    def key(self, backup_id: str, compression: Compression) -> str:
        return self.prefix(backup_id) + EXTENSIONS[compression]

    def inventory_key(self, backup_id: str) -> str:
        return self.prefix(backup_id) + ".inventory.json"


def _covers(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def declared_paths(stack: Stack) -> tuple[list[PathSpec], list[str]]:
    """Every folder a cold backup copies, and notes for the report.

    Declared ``paths`` come first. Then, unless a declared folder on the same node already holds
    them, the tool adds what a consistent cold backup cannot do without: Cassandra's data folders
    and commitlog (from the cassandra section), the attachments folder, and the Docker Compose
    project folder (``docker-compose.yml``, ``.env``, bind-mounted volumes).
    """
    specs: list[PathSpec] = []
    notes: list[str] = []

    def add(spec: PathSpec) -> None:
        if spec.auto and any(s.node == spec.node and _covers(s.path, spec.path) for s in specs):
            return
        taken = {(s.node, s.service, s.name) for s in specs}
        name = spec.name
        while (spec.node, spec.service, name) in taken:
            name += "-auto"
        if spec.auto:
            notes.append(f"added {spec.path} on {spec.node} ({spec.service}/{name}): not declared")
        specs.append(PathSpec(spec.service, spec.node, name, spec.path, spec.auto))

    for svc in ordered(stack, STOP_ORDER):
        for n in svc.nodes:
            for p in svc.paths:
                add(PathSpec(svc.name, n, p.name, p.path.replace("{node}", n)))
    for svc in ordered(stack, STOP_ORDER):
        if isinstance(svc.manager, DockerCompose):
            folder = svc.manager.project_dir or posixpath.dirname(svc.manager.compose_file) or "/"
            for n in svc.nodes:
                add(PathSpec(svc.name, n, "compose-project", folder, auto=True))
    cass = stack.service("cassandra")
    if cass is not None:
        for n in cass.nodes:
            settings = stack.cassandra.settings_for(n)
            for i, d in enumerate(settings.data_dirs):
                add(PathSpec("cassandra", n, "data" if i == 0 else f"data-{i + 1}", d, auto=True))
            add(PathSpec("cassandra", n, "commitlog", settings.commitlog_dir, auto=True))
    att = stack.attachments
    if isinstance(att, FolderAttachments) and stack.service("thehive") is not None:
        add(PathSpec("thehive", att.node, "attachments", att.path, auto=True))
    es = stack.service("elasticsearch")
    if (es is not None and not es.paths and not isinstance(es.manager, DockerCompose)
            and not any(s.service == "elasticsearch" for s in specs)):
        notes.append("elasticsearch declares no paths: its data folder is not saved; the index "
                     "must be rebuilt after a restore (forceDropAndRebuildIndex)")
    for a in specs:
        for b in specs:
            if a is not b and a.node == b.node and a.path != b.path and _covers(a.path, b.path):
                notes.append(f"{b.path} lies inside {a.path} on {a.node}: copied twice")
    return specs, notes


def measure(stack: Stack, spec: PathSpec) -> int:
    """Bytes used by the folder (``du -sk``); ServiceError when it is not a folder."""
    with host_for(stack, spec.node) as host:
        if host.run(["test", "-d", spec.path], timeout=60, check=False).exit_code != 0:
            raise ServiceError(f"{spec.node}: {spec.path} ({spec.service}/{spec.name}) is not a folder")
        out = host.run(["du", "-sk", "--", spec.path], timeout=600)
    return int(out.text.split()[0]) * 1024


def copy_path(stack: Stack, repo: Repository, spec: PathSpec, backup_id: str,
              compression: Compression) -> tuple[list[ObjectEntry], list[dict]]:
    """Stream the folder as a tar into the repository, with its per-file inventory beside it."""
    events = [event("copy", spec.service, spec.node, name=spec.name, path=spec.path)]
    key = spec.key(backup_id, compression)
    stats = TarStats()
    argv = ["tar", "--format=pax", "-C", spec.path, "-cf", "-", "."]
    with host_for(stack, spec.node) as host, host.stream_from(argv, timeout=600) as chunks:
        stored = store(repo, key, pack(chunks, compression, stats, inventory=True))
    inventory = stats.inventory()
    body = json.dumps({"format_version": 1, "node": spec.node, "service": spec.service,
                       "name": spec.name, "path": spec.path, "files": inventory}, indent=1).encode()
    inv = store(repo, spec.inventory_key(backup_id), [body])
    common = dict(component=COMPONENT[spec.service], node=spec.node, service=spec.service,
                  name=spec.name, path=spec.path)
    entries = [
        ObjectEntry(key=key, size=stored.size, sha256=stored.sha256, compression=compression,
                    raw_size=stats.raw_size, files=stats.files, role="archive",
                    bytes=sum(e["size"] for e in inventory if e["sha256"]),
                    inventory_key=inv.key, seconds=round(stored.seconds, 3), **common),
        ObjectEntry(key=inv.key, size=inv.size, sha256=inv.sha256, role="inventory", **common),
    ]
    events.append(event("copied", spec.service, spec.node, name=spec.name, bytes=stored.size))
    return entries, events


# -- Prefect tasks ---------------------------------------------------------------------------------
@task(name="stop service", task_run_name="stop {service} on {node}", cache_policy=NO_CACHE, **RETRYING)
def stop_node_task(stack: Stack, service: str, node: str) -> list[dict]:
    return stop_node(stack, service, node)


@task(name="start service", task_run_name="start {service} on {node}", cache_policy=NO_CACHE, **RETRYING)
def start_node_task(stack: Stack, service: str, node: str) -> list[dict]:
    return start_node(stack, service, node)


@task(name="wait healthy", task_run_name="wait until {service} is healthy", cache_policy=NO_CACHE)
def wait_healthy_task(stack: Stack, service: str) -> list[dict]:
    return wait_healthy(stack, service)


@task(name="hook", task_run_name="hook {step}[{index}]", cache_policy=NO_CACHE)
def hook_task(stack: Stack, step: str, index: int, backup_id: str) -> list[dict]:
    return run_hook(stack, step, index, backup_id)


@task(name="measure folder", task_run_name="measure {spec.node}:{spec.path}", cache_policy=NO_CACHE,
      **RETRYING)
def measure_task(stack: Stack, spec: PathSpec) -> int:
    return measure(stack, spec)


@task(name="copy folder", task_run_name="copy {spec.node}/{spec.service}/{spec.name}",
      cache_policy=NO_CACHE, **RETRYING)
def copy_path_task(stack: Stack, spec: PathSpec, backup_id: str, compression: Compression):
    with open_repository(stack) as repo:
        return copy_path(stack, repo, spec, backup_id, compression)


def spec_dict(spec: PathSpec) -> dict:
    return asdict(spec)
