"""The names this tool gives things outside the repository's keys: backup ids and the Cassandra
snapshot tags of a backup (docs/FORMAT.md, "Backup id" and "Snapshot tags").

A snapshot tag carries the id of the repository the backup goes to, so that a run (or its crash
hook) clears only leftovers of its own repository, never the in-flight snapshot of another
repository backing up the same cluster, nor the restore's ``rb-`` rollback snapshots.
"""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

#: ``<kind>-<YYYYMMDD>-<HHMMSS>-<4 hex>``, UTC (tasks.manifest.new_backup_id makes them).
BACKUP_ID = re.compile(r"^(?P<kind>hot|cold)-(?P<day>\d{8})-(?P<clock>\d{6})-[0-9a-f]{4}$")
#: ``<backup-id>-<repository id>``: the tag of a hot backup's Cassandra snapshots.
SNAPSHOT_TAG = re.compile(r"^(?P<backup_id>(?:hot|cold)-\d{8}-\d{6}-[0-9a-f]{4})-(?P<repo>[0-9a-f]{8})$")
#: Tags of earlier versions (no repository id): they cannot be attributed, so never cleared.
UNATTRIBUTED_TAG = BACKUP_ID
#: The restore's rollback snapshots; never ours to clear here.
ROLLBACK_PREFIX = "rb-"


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
    return bool(m) and m.group("repo") == repo_id and not tag.startswith(ROLLBACK_PREFIX)


def backup_time(backup_id: str) -> datetime | None:
    """The UTC start time of a backup id; None for foreign ids."""
    m = BACKUP_ID.match(backup_id)
    if not m:
        return None
    try:
        return datetime.strptime(m["day"] + m["clock"], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
