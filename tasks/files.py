"""TheHive's attachments: a folder on a node, or objects in an S3 bucket.

A folder is streamed as one archive with a per-file inventory (path, size, mode, owner, SHA-256)
built while the bytes pass; a bucket is copied object by object with a checksum each.
"""
from __future__ import annotations

import hashlib
import json
import posixpath

from config.model import FolderAttachments, S3Attachments, Stack
from tasks import layout
from tasks.archive import Compression, TarStats, compression_of, pack, unpack
from tasks.hosts import host_for
from tasks.manifest import FilesRecord, ObjectEntry
from tasks.repositories import Repository, open_repository
from tasks.repositories.s3 import s3_client
from tasks.retry import side_effect_task
from tasks.transfer import store


def _inventory_entry(backup_id: str, repo: Repository, inventory: list[dict]) -> ObjectEntry:
    body = json.dumps({"format_version": 1, "files": inventory}, indent=1).encode()
    stored = store(repo, layout.attachments_inventory_key(backup_id), [body])
    return ObjectEntry(key=stored.key, size=stored.size, sha256=stored.sha256, component="files")


def backup_folder(stack: Stack, repo: Repository, settings: FolderAttachments, backup_id: str,
                  compression: Compression) -> tuple[dict, list[ObjectEntry]]:
    key = layout.attachments_key(backup_id, compression)
    stats = TarStats()
    argv = ["tar", "--format=pax", "-C", settings.path, "-cf", "-", "."]
    with host_for(stack, settings.node) as host, host.stream_from(host.privileged(argv)) as chunks:
        stored = store(repo, key, pack(chunks, compression, stats, inventory=True))
    inventory = stats.inventory()
    archive = ObjectEntry(key=key, size=stored.size, sha256=stored.sha256, component="files",
                          node=settings.node, compression=compression, raw_size=stats.raw_size,
                          files=stats.files, seconds=round(stored.seconds, 3))
    record = {"kind": "folder", "node": settings.node, "path": settings.path,
              "count": stats.files, "bytes": sum(e["size"] for e in inventory if e["sha256"]),
              "inventory_key": layout.attachments_inventory_key(backup_id)}
    return record, [archive, _inventory_entry(backup_id, repo, inventory)]


def backup_bucket(repo: Repository, settings: S3Attachments,
                  backup_id: str) -> tuple[dict, list[ObjectEntry]]:
    client = s3_client(settings)
    entries, inventory = [], []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket,
                                                              Prefix=settings.prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=settings.bucket, Key=obj["Key"])["Body"]
            key = layout.bucket_object_key(backup_id, obj["Key"])
            try:
                stored = store(repo, key, body.iter_chunks(1024 * 1024))
            finally:
                body.close()
            entries.append(ObjectEntry(key=key, size=stored.size, sha256=stored.sha256,
                                       component="files"))
            inventory.append({"path": obj["Key"], "size": stored.size, "sha256": stored.sha256,
                              "key": key})
    record = {"kind": "s3", "bucket": settings.bucket, "prefix": settings.prefix,
              "count": len(inventory), "bytes": sum(e["size"] for e in inventory),
              "inventory_key": layout.attachments_inventory_key(backup_id)}
    return record, [*entries, _inventory_entry(backup_id, repo, inventory)]


def backup_attachments(stack: Stack, repo: Repository, backup_id: str,
                       compression: Compression) -> tuple[dict, list[ObjectEntry]]:
    settings = stack.attachments
    if isinstance(settings, FolderAttachments):
        return backup_folder(stack, repo, settings, backup_id, compression)
    if isinstance(settings, S3Attachments):
        return backup_bucket(repo, settings, backup_id)
    raise ValueError("the stack has no attachments section")


@side_effect_task(name="attachments backup", task_run_name="attachments {backup_id}")
def backup_attachments_task(stack: Stack, backup_id: str, compression: Compression):
    with open_repository(stack) as repo:
        return backup_attachments(stack, repo, backup_id, compression)


# -- restore -----------------------------------------------------------------------------------

def read_inventory(repo: Repository, key: str) -> list[dict]:
    return json.loads(repo.get_bytes(key))["files"]


def node_checksums(host, path: str) -> dict[str, str]:
    """SHA-256 of every file under ``path`` on the node, by relative path."""
    out = host.run(host.privileged(["sh", "-c", 'cd "$1" && find . -type f -print0 | xargs -0 -r sha256sum',
                    "sh", path]), timeout=3600).text
    sums = {}
    for line in out.splitlines():
        digest, _, name = line.partition("  ")
        sums[posixpath.normpath(name)] = digest
    return sums


def restore_folder(stack: Stack, repo: Repository, settings: FolderAttachments, archive_key: str,
                   inventory: list[dict], mirror: bool) -> dict:
    """Extract the archive over the folder (checked members), then prove every file's bytes."""
    wanted = {e["path"]: e["sha256"] for e in inventory if e["sha256"]}
    with host_for(stack, settings.node) as host:
        host.run(host.privileged(["mkdir", "-p", settings.path]), timeout=60)
        with repo.get(archive_key) as chunks:
            host.stream_to(host.privileged(["tar", "-xpf", "-", "-C", settings.path]),
                           unpack(chunks, compression_of(archive_key), TarStats()), timeout=3600)
        if settings.owner or settings.group:
            owner = f"{settings.owner or ''}:{settings.group or ''}".rstrip(":")
            host.run(host.privileged(["chown", "-R", "--", owner, settings.path]), timeout=3600)
        on_disk = node_checksums(host, settings.path)
        extra = sorted(set(on_disk) - set(wanted))
        if mirror and extra:
            for i in range(0, len(extra), 500):
                host.run(host.privileged(["rm", "-f", "--",
                                          *[posixpath.join(settings.path, p) for p in extra[i:i + 500]]]),
                         timeout=600)
    bad = sorted(p for p, h in wanted.items() if on_disk.get(p) != h)
    if bad:
        raise OSError(f"{len(bad)} attachment(s) differ from the backup after restore: {bad[:5]}")
    return {"files": len(wanted), "kept_extra": 0 if mirror else len(extra),
            "removed_extra": len(extra) if mirror else 0}


def restore_bucket(repo: Repository, settings: S3Attachments, inventory: list[dict],
                   mirror: bool) -> dict:
    client = s3_client(settings)
    for entry in inventory:
        data = repo.get_bytes(entry["key"])
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise OSError(f"{entry['key']}: checksum mismatch")
        client.put_object(Bucket=settings.bucket, Key=entry["path"], Body=data, **settings.write_args())
    removed = 0
    if mirror:
        keep = {e["path"] for e in inventory}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket,
                                                                      Prefix=settings.prefix):
            for obj in page.get("Contents", []):
                if obj["Key"] not in keep:
                    client.delete_object(Bucket=settings.bucket, Key=obj["Key"])
                    removed += 1
    return {"files": len(inventory), "removed_extra": removed}


def restore_attachments(stack: Stack, repo: Repository, record: FilesRecord, objects: list[ObjectEntry],
                        mirror: bool) -> dict:
    inventory = read_inventory(repo, record.inventory_key)
    settings = stack.attachments
    if isinstance(settings, FolderAttachments):
        archive = next(o.key for o in objects
                       if o.component == "files" and layout.is_attachments_archive(o.key))
        return restore_folder(stack, repo, settings, archive, inventory, mirror)
    if isinstance(settings, S3Attachments):
        return restore_bucket(repo, settings, inventory, mirror)
    raise ValueError("the stack has no attachments section")


@side_effect_task(name="attachments restore")
def restore_attachments_task(stack: Stack, record: FilesRecord, objects: list[ObjectEntry],
                             mirror: bool) -> dict:
    with open_repository(stack) as repo:
        return restore_attachments(stack, repo, record, objects, mirror)
