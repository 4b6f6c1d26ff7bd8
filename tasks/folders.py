"""The folders of a cold backup: which folders of which service on which node are copied
(declared paths plus what a consistent cold backup cannot do without), how big they are, and
each streamed out as a tar with its per-file inventory beside it.

Putting them back (journal, move aside, extract, re-hash, put back) is tasks/restore_folders.py.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

from config.model import DockerCompose, FolderAttachments, Stack
from tasks import layout
from tasks.archive import Compression, TarStats, pack
from tasks.hosts import host_for
from tasks.manifest import ObjectEntry
from tasks.repositories import Repository, open_repository
from tasks.retry import side_effect_task
from tasks.services import STOP_ORDER, ServiceError, event, ordered
from tasks.transfer import store

#: The manifest's component of a service's folders.
COMPONENT = {"cassandra": "cassandra", "elasticsearch": "elasticsearch", "thehive": "files"}


@dataclass(frozen=True)
class PathSpec:
    """One folder of one service on one node, and where its archive goes."""

    service: str
    node: str
    name: str
    path: str
    auto: bool = False  # added by the tool, not declared

    def prefix(self, backup_id: str) -> str:
        return layout.cold_prefix(backup_id, self.node, self.service, self.name)

    def key(self, backup_id: str, compression: Compression) -> str:
        return layout.cold_archive_key(backup_id, self.node, self.service, self.name, compression)

    def inventory_key(self, backup_id: str) -> str:
        return layout.cold_inventory_key(backup_id, self.node, self.service, self.name)


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
        if host.run(host.privileged(["test", "-d", spec.path]), timeout=60, check=False).exit_code != 0:
            raise ServiceError(f"{spec.node}: {spec.path} ({spec.service}/{spec.name}) is not a folder")
        out = host.run(host.privileged(["du", "-sk", "--", spec.path]), timeout=600)
    return int(out.text.split()[0]) * 1024


def copy_path(stack: Stack, repo: Repository, spec: PathSpec, backup_id: str,
              compression: Compression) -> tuple[list[ObjectEntry], list[dict]]:
    """Stream the folder as a tar into the repository, with its per-file inventory beside it."""
    events = [event("copy", spec.service, spec.node, name=spec.name, path=spec.path)]
    key = spec.key(backup_id, compression)
    stats = TarStats()
    argv = ["tar", "--format=pax", "-C", spec.path, "-cf", "-", "."]
    with host_for(stack, spec.node) as host, host.stream_from(host.privileged(argv), timeout=600) as chunks:
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
@side_effect_task(name="measure folder", task_run_name="measure {spec.node}:{spec.path}")
def measure_task(stack: Stack, spec: PathSpec) -> int:
    return measure(stack, spec)


@side_effect_task(name="copy folder", task_run_name="copy {spec.node}/{spec.service}/{spec.name}")
def copy_path_task(stack: Stack, spec: PathSpec, backup_id: str, compression: Compression):
    with open_repository(stack) as repo:
        return copy_path(stack, repo, spec, backup_id, compression)
