"""The repository's names, in one place: backup ids, Cassandra snapshot tags, and every object key
a backup, a cold backup, the lock or preflight writes — built and parsed here only
(docs/FORMAT.md, "Backup id", "Layout", "Cold backups", "Lock").

Everything takes and returns plain strings, so any module may import this one (it imports only
``tasks.archive`` for the archive name endings). Key shapes are the format: changing one is a
format change (docs/FORMAT.md), and ``tests/unit/test_layout.py`` checks every example written there
against the builders and parsers below.

A snapshot tag carries the id of the repository the backup goes to, so that a run (or its crash
hook) clears only leftovers of its own repository, never the in-flight snapshot of another
repository backing up the same cluster, nor the restore's ``rb-`` rollback snapshots.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from tasks.archive import EXTENSIONS, compression_of

# -- backup ids ------------------------------------------------------------------------------------
KINDS = ("hot", "cold")
#: ``<kind>-<YYYYMMDD>-<HHMMSS>-<4 hex>``, UTC.
BACKUP_ID = re.compile(r"^(?P<kind>hot|cold)-(?P<day>\d{8})-(?P<clock>\d{6})-(?P<rand>[0-9a-f]{4})\Z")
#: ``<backup-id>-<repository id>``: the tag of a hot backup's Cassandra snapshots.
SNAPSHOT_TAG = re.compile(r"^(?P<backup_id>(?:hot|cold)-\d{8}-\d{6}-[0-9a-f]{4})-(?P<repo>[0-9a-f]{8})\Z")
#: Tags of earlier versions (no repository id): they cannot be attributed, so never cleared.
UNATTRIBUTED_TAG = BACKUP_ID
#: The restore's rollback snapshots; never ours to clear here.
ROLLBACK_PREFIX = "rb-"


@dataclass(frozen=True)
class BackupId:
    """A backup id taken apart."""

    kind: str  # "hot" or "cold"
    time: datetime  # UTC start of the run
    rand: str  # 4 hex digits: two runs in the same second differ


def new_backup_id(kind: str, now: datetime | None = None) -> str:
    """``hot-20261127-072100-3fa2``: valid as snapshot tag, ES snapshot name and object key."""
    if kind not in KINDS:
        raise ValueError(f"unknown backup kind {kind!r} (one of {', '.join(KINDS)})")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{kind}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def parse_backup_id(text: str) -> BackupId | None:
    """The parts of one of our backup ids; None for anything else (foreign folders, reference dates)."""
    m = BACKUP_ID.match(text)
    if not m:
        return None
    try:
        when = datetime.strptime(m["day"] + m["clock"], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return BackupId(m["kind"], when, m["rand"])


def is_backup_id(text: str) -> bool:
    """A name this tool made for a backup (as opposed to any other top-level folder)."""
    return parse_backup_id(text) is not None


def backup_kind(backup_id: str) -> str:
    """``hot``/``cold`` for our ids; for a foreign name its first dash-separated word (the catalog
    shows it as the kind of an incomplete, unreadable entry)."""
    parsed = parse_backup_id(backup_id)
    return parsed.kind if parsed else backup_id.split("-", 1)[0]


def backup_time(backup_id: str) -> datetime | None:
    """The UTC start time of a backup id; None for foreign ids."""
    parsed = parse_backup_id(backup_id)
    return parsed.time if parsed else None


def backup_sort_key(backup_id: str) -> str:
    """Orders ids by start time whatever their kind (``hot-…`` and ``cold-…`` interleave)."""
    return backup_id.split("-", 1)[-1]


# -- repository and snapshot names -----------------------------------------------------------------
def repository_id(url: str) -> str:
    """8 hex digits naming a repository: the start of the SHA-256 of its URL (no secret in it)."""
    return hashlib.sha256(url.encode()).hexdigest()[:8]


def snapshot_tag(backup_id: str, repo_id: str) -> str:
    """``hot-20261127-072100-3fa2-1a2b3c4d``: valid as a tag ([a-z0-9-], 34 characters)."""
    tag = f"{backup_id}-{repo_id}"
    if not SNAPSHOT_TAG.match(tag):
        raise ValueError(f"cannot make a snapshot tag of {backup_id!r} and {repo_id!r}")
    return tag


def is_our_tag(tag: str, repo_id: str) -> bool:
    """A snapshot tag a backup into the repository ``repo_id`` made."""
    m = SNAPSHOT_TAG.match(tag)
    return m is not None and m.group("repo") == repo_id and not tag.startswith(ROLLBACK_PREFIX)


def is_unattributed_tag(tag: str) -> bool:
    """A snapshot tag of an earlier version (a bare backup id): whose, we cannot tell."""
    return bool(UNATTRIBUTED_TAG.match(tag))


# -- object keys: building -------------------------------------------------------------------------
MANIFEST = "manifest.json"
STARTED = "started.json"
INVENTORY_SUFFIX = ".inventory.json"
LOCKS_PREFIX = "locks/"
LOCK_KEY = "locks/lock.json"
BREAK_PREFIX = "locks/break-"
#: Format-1 locks of earlier versions: one object per taker.
LEGACY_LOCK = re.compile(r"^locks/lock-[0-9a-f]+\.json\Z")
PROBE_PREFIX = "probe-"
#: Elasticsearch snapshot blobs, shared by every backup that needs them (docs/FORMAT.md,
#: "Elasticsearch snapshot files"): ``es-blobs/<ES repository uuid>/<path in that repository>``.
ES_BLOBS_PREFIX = "es-blobs/"
#: Content-addressed SSTable components, shared by every backup that needs them (docs/FORMAT.md,
#: "Incremental mode"): ``sstables/<2 hex>/<64 hex name><ending of its compression>``.
SSTABLES_PREFIX = "sstables/"
PART_EXTENSIONS: dict[str, str] = {"zstd": ".zst", "gzip": ".gz", "bzip2": ".bz2", "none": ""}
PARTS_SUFFIX = ".parts.json"
_CONTENT_NAME = re.compile(r"^[0-9a-f]{64}$")
#: The files of an ES snapshot repository that change with every snapshot: kept per backup.
ES_METADATA = re.compile(r"^(?:index-\d+|index\.latest)\Z")
_PLAIN = re.compile(r"[A-Za-z0-9._-]")


def backup_prefix(backup_id: str) -> str:
    """Every object of a backup (its own ones; shared objects would lie outside) starts so."""
    return f"{backup_id}/"


def manifest_key(backup_id: str) -> str:
    return f"{backup_id}/{MANIFEST}"


def started_key(backup_id: str) -> str:
    return f"{backup_id}/{STARTED}"


def table_key(backup_id: str, node: str, keyspace: str, table_dir: str, compression: str) -> str:
    """One table's snapshot on one node; ``table_dir`` is ``<table>-<table id>``."""
    return f"{backup_id}/cassandra/{node}/{keyspace}/{table_dir}{EXTENSIONS[compression]}"


def table_parts_key(backup_id: str, node: str, keyspace: str, table_dir: str) -> str:
    """One table's component list on one node (incremental mode)."""
    return f"{backup_id}/cassandra/{node}/{keyspace}/{table_dir}{PARTS_SUFFIX}"


def sstable_key(name: str, compression: str) -> str:
    """One content-addressed component: its content name (64 hex) and its own compression."""
    if not _CONTENT_NAME.match(name):
        raise ValueError(f"{name!r} is not a content name (64 hex digits)")
    return f"{SSTABLES_PREFIX}{name[:2]}/{name}{PART_EXTENSIONS[compression]}"


def schema_key(backup_id: str, keyspace: str) -> str:
    return f"{backup_id}/cassandra/schema/{keyspace}.cql"


def attachments_key(backup_id: str, compression: str) -> str:
    """The attachments folder of a hot backup, as one archive."""
    return f"{backup_id}/files/attachments{EXTENSIONS[compression]}"


def attachments_inventory_key(backup_id: str) -> str:
    return f"{backup_id}/files/inventory.json"


def bucket_object_key(backup_id: str, bucket_key: str) -> str:
    """One object of an attachments bucket (its key percent-quoted, slashes kept)."""
    return f"{backup_id}/files/objects/{quote(bucket_key, safe='/')}"


def _quote_part(part: str) -> str:
    """One path part as a valid key part: every character but ``[A-Za-z0-9._-]`` percent-encoded,
    and a leading ``.``, ``_`` or ``-`` too (ES names blobs ``__<uuid>``; uuids may start with ``-``)."""
    out = "".join(c if _PLAIN.match(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in part)
    return f"%{ord(out[0]):02X}{out[1:]}" if out[:1] in (".", "_", "-") else out


def es_blob_key(es_repository: str, path: str) -> str:
    """One immutable file of an ES snapshot repository (``path`` relative to its location)."""
    if not path or ES_METADATA.match(path):
        raise ValueError(f"{path!r} is not a shared snapshot blob")
    parts = [es_repository, *path.split("/")]
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"cannot make a key of ES repository {es_repository!r} path {path!r}")
    return ES_BLOBS_PREFIX + "/".join(_quote_part(p) for p in parts)


def es_blobs_prefix(es_repository: str) -> str:
    """Every blob of one ES snapshot repository starts so."""
    return f"{ES_BLOBS_PREFIX}{_quote_part(es_repository)}/"


def es_metadata_key(backup_id: str, name: str) -> str:
    """The repository's ``index-N`` or ``index.latest`` as this backup's snapshot left them."""
    if not ES_METADATA.match(name):
        raise ValueError(f"{name!r} is not ES repository metadata")
    return f"{backup_id}/elasticsearch/{name}"


def is_es_metadata_path(path: str) -> bool:
    """A root file of an ES snapshot repository that a later snapshot replaces."""
    return bool(ES_METADATA.match(path))


def cold_prefix(backup_id: str, node: str, service: str, name: str) -> str:
    return f"{backup_id}/cold/{node}/{service}/{name}"


def cold_archive_key(backup_id: str, node: str, service: str, name: str, compression: str) -> str:
    """One declared folder of one service on one node, in a cold backup."""
    return cold_prefix(backup_id, node, service, name) + EXTENSIONS[compression]


def cold_inventory_key(backup_id: str, node: str, service: str, name: str) -> str:
    return cold_prefix(backup_id, node, service, name) + INVENTORY_SUFFIX


def break_marker_key(nonce: str) -> str:
    """The marker of the run breaking the stale lock ``nonce`` (``legacy`` for a format-1 lock)."""
    return f"{BREAK_PREFIX}{nonce or 'legacy'}.json"


def probe_key() -> str:
    """A throw-away top-level object preflight writes to test the exclusive create."""
    return f"{PROBE_PREFIX}{uuid.uuid4().hex}"


# -- object keys: parsing --------------------------------------------------------------------------
def is_lock_key(key: str) -> bool:
    """The current lock or a format-1 one (not a break marker)."""
    return key == LOCK_KEY or bool(LEGACY_LOCK.match(key))


def is_legacy_lock_key(key: str) -> bool:
    return bool(LEGACY_LOCK.match(key))


def is_break_marker(key: str) -> bool:
    return key.startswith(BREAK_PREFIX)


def backup_id_of(key: str) -> str | None:
    """The backup a key belongs to: its first folder, unless the key is top-level (a probe) or
    under ``locks/``. Foreign folders count, so that the catalog shows what it cannot read."""
    backup_id, _, rest = key.partition("/")
    if not rest or f"{backup_id}/" in (LOCKS_PREFIX, ES_BLOBS_PREFIX, SSTABLES_PREFIX):
        return None
    return backup_id


def is_manifest_key(key: str) -> bool:
    backup_id = backup_id_of(key)
    return backup_id is not None and key == manifest_key(backup_id)


@dataclass(frozen=True)
class Key:
    """What a repository key names. ``kind`` is one of manifest, started, table, schema,
    attachments, attachments-inventory, bucket-object, cold-archive, cold-inventory, es-blob,
    es-metadata, table-parts, sstable, lock, legacy-lock, break-marker, probe, other; fields not
    meaningful for it are None."""

    kind: str
    backup_id: str | None = None
    node: str | None = None
    keyspace: str | None = None
    table_dir: str | None = None
    compression: str | None = None
    service: str | None = None
    name: str | None = None
    bucket_key: str | None = None
    nonce: str | None = None
    es_repository: str | None = None  # es-blob: the ES repository's uuid
    path: str | None = None  # es-blob: the file's path in the ES repository


def _archive_stem(name: str) -> tuple[str, str] | None:
    """``edgestore-1a2b.tar.zst`` → (``edgestore-1a2b``, ``zstd``), for the endings we write."""
    for compression, ext in EXTENSIONS.items():
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], compression
    return None


def parse_key(key: str) -> Key:
    """Name what a key is, by the shapes docs/FORMAT.md lists; ``kind="other"`` for the rest."""
    if is_break_marker(key) and key.endswith(".json"):
        return Key("break-marker", nonce=key[len(BREAK_PREFIX):-len(".json")])
    if key == LOCK_KEY:
        return Key("lock")
    if is_legacy_lock_key(key):
        return Key("legacy-lock")
    if "/" not in key and key.startswith(PROBE_PREFIX):
        return Key("probe")
    if key.startswith(ES_BLOBS_PREFIX):
        es_repo, _, path = key[len(ES_BLOBS_PREFIX):].partition("/")
        if es_repo and path and not ES_METADATA.match(unquote(path)):
            return Key("es-blob", es_repository=unquote(es_repo), path=unquote(path))
        return Key("other")
    if key.startswith(SSTABLES_PREFIX):
        return _sstable(key)
    bid = backup_id_of(key)
    if bid is None:
        return Key("other")
    parts = key.split("/")[1:]
    if parts == [MANIFEST]:
        return Key("manifest", bid)
    if parts == [STARTED]:
        return Key("started", bid)
    if parts[0] == "cassandra" and len(parts) == 3 and parts[1] == "schema" and parts[2].endswith(".cql"):
        return Key("schema", bid, keyspace=parts[2][: -len(".cql")])
    if parts[0] == "cassandra" and len(parts) == 4 and (stem := _archive_stem(parts[3])):
        return Key("table", bid, node=parts[1], keyspace=parts[2], table_dir=stem[0], compression=stem[1])
    if parts[0] == "cassandra" and len(parts) == 4 and parts[3].endswith(PARTS_SUFFIX) \
            and len(parts[3]) > len(PARTS_SUFFIX):
        return Key("table-parts", bid, node=parts[1], keyspace=parts[2],
                   table_dir=parts[3][: -len(PARTS_SUFFIX)])
    if parts[0] == "files":
        if parts[1:] == ["inventory.json"]:
            return Key("attachments-inventory", bid)
        if len(parts) == 2 and (stem := _archive_stem(parts[1])) and stem[0] == "attachments":
            return Key("attachments", bid, compression=stem[1])
        if len(parts) >= 3 and parts[1] == "objects":
            return Key("bucket-object", bid, bucket_key=unquote("/".join(parts[2:])))
    if parts[0] == "elasticsearch" and len(parts) == 2 and ES_METADATA.match(parts[1]):
        return Key("es-metadata", bid, name=parts[1])
    if parts[0] == "cold" and len(parts) == 4:
        node, service, leaf = parts[1:]
        if leaf.endswith(INVENTORY_SUFFIX):
            return Key("cold-inventory", bid, node=node, service=service, name=leaf[: -len(INVENTORY_SUFFIX)])
        if stem := _archive_stem(leaf):
            return Key("cold-archive", bid, node=node, service=service, name=stem[0], compression=stem[1])
    return Key("other", bid)


def _sstable(key: str) -> Key:
    """``sstables/<2 hex>/<name><ext>``, or other."""
    parts = key[len(SSTABLES_PREFIX):].split("/")
    if len(parts) == 2:
        for compression, ext in sorted(PART_EXTENSIONS.items(), key=lambda kv: -len(kv[1])):
            name = parts[1][: len(parts[1]) - len(ext)] if ext else parts[1]
            if parts[1].endswith(ext) and _CONTENT_NAME.match(name) and parts[0] == name[:2]:
                return Key("sstable", name=name, compression=compression)
    return Key("other")


def cold_service_of(key: str) -> str | None:
    """The service a cold backup's archive or inventory belongs to; None for other keys."""
    parsed = parse_key(key)
    return parsed.service if parsed.kind in ("cold-archive", "cold-inventory") else None


def is_attachments_archive(key: str) -> bool:
    """The archive of a hot backup's attachments folder (not its inventory, not bucket objects)."""
    return parse_key(key).kind == "attachments"


def is_archive_key(key: str) -> bool:
    """A key whose bytes are a tar stream (any name ``tasks.archive`` reads)."""
    try:
        compression_of(key)
    except ValueError:
        return False
    return True
