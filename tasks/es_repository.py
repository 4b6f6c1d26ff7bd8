"""Elasticsearch's ``fs`` snapshot repository, copied into our repository and put back from it.

The snapshot alone lives in Elasticsearch's ``path.repo`` folder on the ES host: lost with that
disk. After each snapshot the folder's files are copied into our repository (docs/FORMAT.md,
"Elasticsearch snapshot files"). Every file but the root ``index-N``/``index.latest`` is named by
a uuid and never rewritten, so it is stored once, under ``es-blobs/<ES repository uuid>/<path>``,
and a later backup copies only the files it does not find there; ``index-N`` and
``index.latest`` are stored per backup, after the blobs. The whole folder is copied at one
generation (``index-N``), not only the files of this backup's snapshot: what ES reads back is
then exactly a repository it wrote.

A restore onto a cluster that lacks the snapshot writes the files back into the location (blobs
first, ``index.latest`` last), registers the repository, and restores from it as usual.
"""
from __future__ import annotations

import json
import logging
import posixpath
import re
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta

from config.model import Elasticsearch as EsSettings
from config.model import Node, Stack
from tasks import elasticsearch, layout
from tasks.elasticsearch import ElasticsearchError, TransientElasticsearchError, es_session
from tasks.hosts import CommandFailed, Host, host_for
from tasks.manifest import Digest, ElasticsearchRecord, ObjectEntry, complete_manifests
from tasks.repositories import Repository, open_repository
from tasks.retry import side_effect_task

log = logging.getLogger(__name__)
#: The names ES gives files in an fs repository (base64url uuids, ``index-N``, ``.dat``).
SAFE_PATH = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*\Z")
TMP_SUFFIX = ".thb-tmp"


@dataclass(frozen=True)
class Location:
    """Where the ES snapshot repository's files are: a folder on a node with the ES role."""

    node: Node
    path: str


def location_of(st: Stack) -> Location | None:
    """The fs repository's folder and the node that sees it; None when there is nothing to copy
    (an ``s3`` snapshot repository is off the ES host already)."""
    es = st.elasticsearch
    if es is None or es.snapshot_repository.type != "fs":
        return None
    path = str(es.snapshot_repository.settings.get("location", ""))
    nodes = st.nodes_with("elasticsearch")
    if not path.startswith("/") or not nodes:
        log.warning("ES snapshot files not copied: %s", "no node has the elasticsearch role" if not nodes
                    else f"location {path!r} is not an absolute path")
        return None
    return Location(nodes[0], posixpath.normpath(path))


# -- reading the ES host ---------------------------------------------------------------------------
def list_files(host: Host, root: str) -> dict[str, int]:
    """Every file under ``root`` with its size; ES's own temporary ``pending-*`` blobs and ours left out."""
    found: dict[str, int] = {}
    out = host.run(host.privileged(["find", root, "-type", "f", "-printf", "%P\\t%s\\n"]), timeout=600).text
    for line in out.splitlines():
        path, _, size = line.rpartition("\t")
        name = posixpath.basename(path)
        if name.startswith("pending-") or name.endswith(TMP_SUFFIX):
            continue
        if not SAFE_PATH.match(path) or ".." in path.split("/"):
            raise ElasticsearchError(f"{host.name}:{root}: unexpected file name {path!r} in the "
                                     "snapshot repository")
        found[path] = int(size)
    return found


def read_file(host: Host, path: str) -> bytes:
    return host.run(host.privileged(["cat", "--", path]), timeout=300).stdout


def generation(files: dict[str, int]) -> int | None:
    """The repository's generation as ES finds it: the highest root ``index-N`` (None: no snapshot
    was ever written there)."""
    gens = [int(p[len("index-"):]) for p in files if p.startswith("index-") and "/" not in p]
    return max(gens) if gens else None


def _running(settings: EsSettings) -> list[str]:
    """Snapshots and deletions in progress in the repository: while one runs, files are half written."""
    name = settings.snapshot_repository.name
    with es_session(settings) as es:
        current = es.snapshot.get(repository=name, snapshot="_current")["snapshots"]
    return [s["snapshot"] for s in current]


# -- backup ----------------------------------------------------------------------------------------
def stored_entries(repo: Repository, ignore: frozenset[str] = frozenset()) -> tuple[dict[str, ObjectEntry], bool]:
    """The blob entries every readable complete backup (but those in ``ignore``) records, by
    key; False when a manifest could not be read (its references are then unknown)."""
    known: dict[str, ObjectEntry] = {}
    manifests, complete = complete_manifests(repo, ignore)
    for m in manifests:
        for entry in ((m.elasticsearch.files or []) if m.elasticsearch else []):
            if entry.key.startswith(layout.ES_BLOBS_PREFIX):
                known[entry.key] = entry
    return known, complete


def _copy(host: Host, repo: Repository, source: str, key: str, size: int) -> ObjectEntry:
    digest = Digest()
    with host.stream_from(host.privileged(["cat", "--", source]), timeout=300) as chunks:
        repo.put(key, digest.through(chunks))
    if digest.size != size:  # ES never rewrites a blob: a different size is a concurrent write
        raise TransientElasticsearchError(f"{source}: {digest.size} bytes read, {size} listed")
    return ObjectEntry(key=key, size=digest.size, sha256=digest.sha256, component="elasticsearch")


def copy_out(st: Stack, backup_id: str) -> dict:
    """Copy the ES repository's files into ours; the manifest fields it fills (empty when there
    is no fs location). Idempotent: a retry copies again only what no manifest records yet."""
    loc = location_of(st)
    if loc is None or st.elasticsearch is None:
        return {}
    settings = st.elasticsearch
    if busy := _running(settings):
        raise TransientElasticsearchError(f"snapshot(s) {busy} running in the ES repository; "
                                          "its files are copied once they end")
    with host_for(st, loc.node) as host, open_repository(st) as repo:
        files = list_files(host, loc.path)
        gen = generation(files)
        if gen is None:
            raise ElasticsearchError(f"{loc.node.name}:{loc.path} holds no index-N: is it the "
                                     f"location of ES repository {settings.snapshot_repository.name}?")
        index_n = read_file(host, posixpath.join(loc.path, f"index-{gen}"))
        es_uuid = str(json.loads(index_n).get("uuid") or "_na_")
        known, _ = stored_entries(repo)
        stored = {o.key: o.size for o in repo.list(layout.es_blobs_prefix(es_uuid))}
        entries: list[ObjectEntry] = []
        copied = copied_bytes = 0
        try:
            for path, size in sorted(files.items()):
                if layout.is_es_metadata_path(path):
                    continue
                key = layout.es_blob_key(es_uuid, path)
                entry = known.get(key)
                if entry is not None and entry.size != size:
                    raise ElasticsearchError(f"{path}: {size} bytes in the ES repository, but a kept "
                                             f"backup recorded {entry.size} for {key}: not the same file")
                if entry is None or stored.get(key) != size:
                    entry = _copy(host, repo, posixpath.join(loc.path, path), key, size)
                    copied, copied_bytes = copied + 1, copied_bytes + size
                entries.append(entry.model_copy(update={"path": path}))
        except CommandFailed as exc:  # a file gone: the repository changed under us
            raise TransientElasticsearchError(f"ES repository changed while copied: {exc}") from exc
        # the metadata last: a copy without it is never taken for a whole repository
        latest = read_file(host, posixpath.join(loc.path, "index.latest"))
        if latest != struct.pack(">q", gen) or generation(list_files(host, loc.path)) != gen:
            raise TransientElasticsearchError(f"ES repository moved past generation {gen} while copied")
        for name, data in ((f"index-{gen}", index_n), ("index.latest", latest)):
            key = layout.es_metadata_key(backup_id, name)
            repo.put_bytes(key, data)
            d = Digest()
            list(d.through([data]))
            entries.append(ObjectEntry(key=key, size=d.size, sha256=d.sha256, component="elasticsearch",
                                       path=name))
            copied, copied_bytes = copied + 1, copied_bytes + d.size
    if busy := _running(settings):
        raise TransientElasticsearchError(f"snapshot(s) {busy} started while the files were copied")
    log.info("ES repository %s generation %d: %d file(s), %d copied (%d bytes)", es_uuid, gen,
             len(entries), copied, copied_bytes)
    return {"repository_uuid": es_uuid, "generation": gen, "files": [e.model_dump() for e in entries],
            "copied_files": copied, "copied_bytes": copied_bytes}


@side_effect_task(name="elasticsearch snapshot into the repository", task_run_name="snapshot {backup_id}")
def snapshot_and_copy_task(st: Stack, backup_id: str) -> dict:
    """The ES snapshot, then its repository's files copied into ours: the manifest's ``elasticsearch``."""
    if st.elasticsearch is None:
        raise ElasticsearchError("the stack has no elasticsearch section")
    record = elasticsearch.snapshot(st.elasticsearch, backup_id)
    record.update(copy_out(st, backup_id))
    return record


# -- restore ---------------------------------------------------------------------------------------
def _root_index_files(host: Host, root: str) -> dict[str, int]:
    out = host.run(host.privileged(["find", root, "-maxdepth", "1", "-type", "f", "-name", "index*",
                    "-printf", "%f\\t%s\\n"]), check=False, timeout=120)
    return {n: int(s) for n, _, s in (line.partition("\t") for line in out.text.splitlines()) if n}


def _file_sha(host: Host, path: str) -> str:
    d = Digest()
    list(d.through([read_file(host, path)]))
    return d.sha256


def put_back_problem(st: Stack, record: ElasticsearchRecord) -> str | None:
    """Why the backup's snapshot cannot be put back into the ES repository (None: it can, or it
    is there already). Only into a repository that holds no snapshot: never over another's data."""
    if not record.files:
        return f"backup has no copy of the ES repository's files (snapshot {record.snapshot})"
    loc = location_of(st)
    if loc is None or st.elasticsearch is None:
        return "the stack's ES snapshot repository is not an fs location on a node with the elasticsearch role"
    settings = st.elasticsearch
    name = settings.snapshot_repository.name
    if name != record.repository:
        return (f"the backup's snapshot is of ES repository {record.repository}, the stack's "
                f"repository is {name}")
    try:
        with es_session(settings) as es:
            try:
                snaps = es.snapshot.get(repository=name, snapshot="_all", verbose=False)["snapshots"]
            except elasticsearch.NotFoundError:
                snaps = None
    except ElasticsearchError as exc:
        return f"elasticsearch: {exc}"
    if snaps:
        names = [s["snapshot"] for s in snaps]
        if record.snapshot in names:
            return None
        return (f"ES repository {name} holds other snapshots ({', '.join(names[:3])}…) but not "
                f"{record.snapshot}: point it at an empty location, or use index_strategy='rebuild'")
    with host_for(st, loc.node) as host:
        return _foreign_index_files(host, loc.path, record)


def _foreign_index_files(host: Host, root: str, record: ElasticsearchRecord) -> str | None:
    """Repository data in the folder that is not this backup's: it would win over ours."""
    ours = {e.path: e for e in record.files or [] if e.path and layout.is_es_metadata_path(e.path)}
    for fname, size in _root_index_files(host, root).items():
        entry = ours.get(fname)
        if entry is None or entry.size != size or _file_sha(host, posixpath.join(root, fname)) != entry.sha256:
            return (f"{host.name}:{root} holds repository data ({fname}) that is not backup "
                    f"{record.snapshot}'s: point the ES repository at an empty location, or use "
                    "index_strategy='rebuild'")
    return None


def _ordered(files: list[ObjectEntry]) -> list[ObjectEntry]:
    """Blobs first, then ``index-N``, then ``index.latest``: ES sees a repository only once whole."""
    rank = {"index.latest": 2}
    return sorted(files, key=lambda e: (rank.get(e.path or "", 1 if layout.is_es_metadata_path(e.path or "")
                                                 else 0), e.path or ""))


def _write(host: Host, repo: Repository, root: str, entry: ObjectEntry) -> None:
    """One file into the location, atomically (temporary name, then rename), checked as it streams."""
    target = posixpath.join(root, entry.path or "")
    digest = Digest()
    with repo.get(entry.key) as chunks:
        host.stream_to(host.privileged(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1$2"', "sh", target,
                                        TMP_SUFFIX]),
                       digest.through(chunks), timeout=300)
    if digest.size != entry.size or digest.sha256 != entry.sha256:
        raise ElasticsearchError(f"{entry.key}: read back {digest.size} bytes, SHA-256 {digest.sha256[:16]}…, "
                                 f"the manifest says {entry.size} bytes, {entry.sha256[:16]}…")
    host.run(host.privileged(["mv", "-f", "--", target + TMP_SUFFIX, target]), timeout=60)


def put_back(st: Stack, record: ElasticsearchRecord) -> dict:
    """Make the backup's snapshot available to ES: present already → nothing; else write the
    copied files into the repository's (empty) location, register it, and check the snapshot is
    listed. A crash half-way leaves unregistered files this same call finishes."""
    if elasticsearch.check_snapshot(_settings(st), record) is None:
        return {"put_back": False}
    if problem := put_back_problem(st, record):
        raise ElasticsearchError(problem)
    settings, loc = _settings(st), location_of(st)
    assert loc is not None  # put_back_problem said so
    repo_settings = settings.snapshot_repository
    with es_session(settings) as es:  # empty or absent: ES must read the folder afresh
        try:
            es.snapshot.delete_repository(name=repo_settings.name)
        except elasticsearch.NotFoundError:
            pass
    written = 0
    with host_for(st, loc.node) as host, open_repository(st) as repo:
        host.run(host.privileged(["mkdir", "-p", "--", loc.path]), timeout=60)
        for entry in _ordered(record.files or []):
            _write(host, repo, loc.path, entry)
            written += entry.size
        # ES runs as the folder's owner: what we made must be its too
        host.run(host.privileged(["chown", "-R", f"--reference={loc.path}", "--", loc.path]), timeout=600)
    with es_session(settings) as es:
        elasticsearch.ensure_repository(es, repo_settings.name, repo_settings.type, repo_settings.settings)
    if problem := elasticsearch.check_snapshot(settings, record):
        raise ElasticsearchError(f"put back, registered, but: {problem}")
    return {"put_back": True, "files": len(record.files or []), "bytes": written, "node": loc.node.name,
            "location": loc.path}


def _settings(st: Stack) -> EsSettings:
    if st.elasticsearch is None:
        raise ElasticsearchError("the stack has no elasticsearch section")
    return st.elasticsearch


@side_effect_task(name="elasticsearch snapshot put back", task_run_name="put back {record.snapshot}")
def put_back_task(st: Stack, record: ElasticsearchRecord) -> dict:
    return put_back(st, record)


# -- prune -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlobSweep:
    """What prune does with the shared blobs: delete the unreferenced ones, unless it cannot know."""

    unreferenced: list[str]
    bytes: int
    kept: int
    skipped: str = ""  # why nothing was deleted


def plan_sweep(repo: Repository, incomplete: list[str], now: datetime, grace_hours: float,
               deleted: frozenset[str] = frozenset()) -> BlobSweep:
    """Blobs no complete backup (but the ``deleted`` ones) references. Nothing is deleted while
    a manifest is unreadable (its references are unknown) or while an incomplete backup is younger
    than the grace period (it may still be running, its blobs not yet recorded anywhere; prune
    holds the lock besides, which every backup takes)."""
    known, readable = stored_entries(repo, deleted)
    young = [b for b in incomplete
             if (t := layout.backup_time(b)) is not None and now - t < timedelta(hours=grace_hours)]
    blobs = list(repo.list(layout.ES_BLOBS_PREFIX))
    doomed = [o for o in blobs if o.key not in known and layout.parse_key(o.key).kind == "es-blob"]
    skipped = ("a manifest is unreadable" if not readable else
               f"backup(s) {', '.join(young)} may still be running" if young else "")
    if skipped:
        return BlobSweep([], 0, len(blobs), skipped)
    return BlobSweep(sorted(o.key for o in doomed), sum(o.size for o in doomed), len(blobs) - len(doomed))


def sweep(repo: Repository, plan: BlobSweep) -> int:
    for key in plan.unreferenced:
        repo.delete(key)
    return len(plan.unreferenced)

