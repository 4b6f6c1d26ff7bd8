"""The backup manifest (docs/FORMAT.md): what a backup holds, written last, read first."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.layout import manifest_key
from tasks.repositories import Repository

FORMAT_VERSION = 1
TOOL = {"name": "thehive-backup", "version": "0.1.0"}


class ManifestError(ValueError):
    """A manifest is missing, unreadable, or of a format this version cannot read."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class ObjectEntry(_Model):
    key: str
    size: int
    sha256: str
    component: Literal["cassandra", "elasticsearch", "files"]
    node: str | None = None
    keyspace: str | None = None
    table: str | None = None
    table_dir: str | None = None
    compression: str = "none"
    raw_size: int | None = None
    files: int | None = None


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
    cassandra: dict[str, Any] | None = None
    elasticsearch: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    timings: dict[str, float] = {}

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_manifest(repo: Repository, manifest: Manifest) -> str:
    """Write the manifest atomically; call only after every object it lists is stored."""
    key = manifest_key(manifest.backup_id)
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
        return Manifest.model_validate(raw)
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
