"""The backup manifest (docs/FORMAT.md): what a backup holds, written last, read first."""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from tasks.layout import manifest_key
from tasks.repositories import Repository

FORMAT_VERSION = 1
TOOL = {"name": "thehive-backup", "version": "0.1.0"}


log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """A manifest is missing, unreadable, or of a format this version cannot read."""


class _Model(BaseModel):
    """Strict when written, tolerant when read.

    Building a model (what the writers do) refuses an unknown field, so nothing reaches a manifest
    without being declared here. ``parse_manifest`` validates with ``context={"read": True}``: a
    field this version does not know (written by a later version of the same format) is dropped, and
    a field an earlier version did not write takes its default.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown_when_reading(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and info.context and info.context.get("read"):
            return {k: v for k, v in data.items() if k in cls.model_fields}
        return data


class SSTablePart(_Model):
    """One component of a table's snapshot folder, stored once under its content name
    (docs/FORMAT.md, "Incremental mode")."""

    path: str  # relative to the snapshot folder
    size: int  # of the component
    name: str  # content name: SHA-256, or HMAC-SHA256(Kc, SHA-256) with encryption
    key: str  # sstables/<2 hex>/<name><ext>
    compression: str = "none"
    stored_size: int  # of the stored (compressed) bytes
    stored_sha256: str
    added: bool = False  # this backup wrote the object
    #: ``<inode>:<mtime>`` of the file the node listed (``find -printf %i:%T@``): with the node,
    #: table folder, path and size, what lets a later backup know the file unchanged unhashed.
    ident: str | None = None


class ObjectEntry(_Model):
    """One stored object. The common fields first; then what Cassandra table archives carry;
    then what the objects of a cold backup carry (docs/FORMAT.md, "Cold backups")."""

    key: str
    size: int
    sha256: str
    component: Literal["cassandra", "elasticsearch", "files"]
    node: str | None = None
    compression: str = "none"
    raw_size: int | None = None  # bytes of the tar stream before compression
    files: int | None = None  # files in the archive
    seconds: float | None = None  # time to stream it into the repository
    # Cassandra table archives
    keyspace: str | None = None
    table: str | None = None
    table_dir: str | None = None  # "<table>-<table id>"
    sstables: int | None = None  # SSTables in the archive (Data.db files at its root)
    #: name-independent identity of the table's SSTables on the node (tasks/table_archive.py)
    fingerprint: str | None = None
    #: incremental mode: the table's components; ``key`` is then its ``.parts.json`` list
    parts: list[SSTablePart] | None = None
    # cold backups
    role: Literal["archive", "inventory"] | None = None
    service: str | None = None
    name: str | None = None  # the folder's name in the stack file
    path: str | None = None  # the folder on the node, ``{node}`` expanded
    bytes: int | None = None  # sum of the archived files' sizes
    inventory_key: str | None = None  # the archive's per-file inventory


class TableDigest(_Model):
    rows: int
    digest: str


class KeyspaceRecord(_Model):
    schema_cql: str
    replication: dict[str, str] = {}
    tables: dict[str, str] = {}  # table name -> table id ("" when unknown: reference backups)
    digests: dict[str, TableDigest] | None = None  # per table, when the backup recorded them


class NodeRecord(_Model):
    address: str
    host_id: str
    name: str | None = None  # the stack's name of the node, when the stack knew the address
    dc: str | None = None
    rack: str | None = None
    tokens: list[str] = []


class CassandraRecord(_Model):
    version: str | None = None
    cluster_name: str | None = None
    partitioner: str | None = None
    keyspaces: dict[str, KeyspaceRecord] = {}
    nodes: list[NodeRecord] = []  # empty: no recorded topology (reference backups)
    #: node name -> the system keyspaces archived from it (include_system_keyspaces); only a node
    #: rebuild reads their table archives, restores and drills ignore them.
    system_keyspaces: dict[str, list[str]] | None = None


class IndexRecord(_Model):
    docs: int | None = None
    shards: int | None = None


class ElasticsearchRecord(_Model):
    """The snapshot of a backup; also, with only repository, snapshot and indices, the snapshot a
    restore keeps of the indices it replaces."""

    repository: str
    snapshot: str
    indices: dict[str, IndexRecord] = {}
    version: str | None = None
    repository_type: str | None = None
    uuid: str | None = None
    state: str | None = None
    shards: dict[str, int] = {}  # total, successful, failed
    seconds: float | None = None
    # The fs snapshot repository's files, copied into ours (docs/FORMAT.md, "Elasticsearch
    # snapshot files"); empty for backups of earlier versions and for s3 snapshot repositories.
    repository_uuid: str | None = None  # the ES repository's own uuid (its ``index-N``)
    generation: int | None = None  # N of the ``index-N`` the copy was taken at
    #: Every file the repository held at that generation: ``path`` is its place in the ES
    #: repository, ``key`` the shared blob or this backup's metadata object.
    files: list[ObjectEntry] | None = None
    copied_files: int | None = None  # of ``files``, those this backup wrote (the rest was stored)
    copied_bytes: int | None = None


class FilesRecord(_Model):
    """TheHive's attachments: a folder archive (hot or cold backup) or a bucket copied object by object."""

    kind: Literal["folder", "s3"]
    node: str | None = None
    path: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    count: int = 0
    bytes: int = 0
    inventory_key: str


class ColdFolder(_Model):
    service: str
    node: str
    name: str
    path: str
    auto: bool = False  # added by the tool, not declared in the stack file
    bytes_measured: int | None = None


class ColdRecord(_Model):
    folders: list[ColdFolder] = []
    notes: list[str] = []
    restart: str = "ok"  # or "FAILED: …"
    downtime_seconds: float | None = None
    #: stop/drain/copy/start/healthy steps: ``{t, event, service, node, …}``; free-form details.
    events: list[dict[str, Any]] = []


class Manifest(_Model):
    format_version: int = FORMAT_VERSION
    backup_id: str
    kind: Literal["hot", "cold"]
    stack: str
    label: str = ""
    started_at: str
    finished_at: str
    tool: dict[str, str] = Field(default_factory=lambda: dict(TOOL))
    components: list[str]
    objects: list[ObjectEntry] = []
    cassandra: CassandraRecord | None = None
    elasticsearch: ElasticsearchRecord | None = None
    files: FilesRecord | None = None
    cold: ColdRecord | None = None
    timings: dict[str, float] = {}
    #: encrypted repositories: the id of the key whose Kc named this backup's components
    #: (incremental mode); a later backup under the same key takes their names by file identity
    content_key_id: str | None = None

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_manifest(repo: Repository, manifest: Manifest) -> str:
    """Write the manifest atomically; call only after every object it lists is stored."""
    key = manifest_key(manifest.backup_id)
    manifest = Manifest.model_validate(manifest.model_dump())  # strict: fields set after building too
    repo.put_bytes(key, manifest.model_dump_json(indent=2, exclude_none=True).encode())
    return key


def parse_manifest(data: bytes, source: str) -> Manifest:
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"{source}: not valid JSON: {exc}") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{source}: format_version {version!r} is not supported (this tool reads {FORMAT_VERSION})"
        )
    try:
        return Manifest.model_validate(raw, context={"read": True})
    except ValidationError as exc:
        raise ManifestError(f"{source}: {exc}") from None


def read_manifest(repo: Repository, backup_id: str) -> Manifest:
    key = manifest_key(backup_id)
    if repo.stat(key) is None:
        raise ManifestError(f"{repo.url}/{key}: no manifest; the backup is incomplete or unknown")
    return parse_manifest(repo.get_bytes(key), f"{repo.url}/{key}")


class Digest:
    """Counts and hashes bytes as they stream past, so nothing is read twice."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    def through(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self._sha.update(chunk)
            self.size += len(chunk)
            yield chunk

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


def complete_manifests(repo: Repository, ignore: frozenset[str] = frozenset()) -> tuple[list[Manifest], bool]:
    """The manifest of every complete backup but those in ``ignore``; False when one could not be
    read (what it references is then unknown: callers that delete must not)."""
    from tasks import layout  # the module imports only manifest_key from it at load time

    manifests, readable = [], True
    for obj in repo.list():
        backup_id = layout.backup_id_of(obj.key) or ""
        if not layout.is_manifest_key(obj.key) or not layout.is_backup_id(backup_id) or backup_id in ignore:
            continue
        try:
            manifests.append(read_manifest(repo, backup_id))
        except ManifestError as exc:
            log.warning("%s", exc)
            readable = False
    return manifests, readable
