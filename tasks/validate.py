"""Proof before action: every object of a backup present, intact and safe to extract.

Each object is read once: its bytes are hashed and, for an archive, decompressed and walked member
by member, so a corrupted byte, a missing object or a hostile member (``../``, absolute path, link)
is found here, before a restore has stopped a service or dropped a keyspace.
"""
from __future__ import annotations

import re
import tarfile
from concurrent.futures import ThreadPoolExecutor

from prefect import task
from prefect.cache_policies import NO_CACHE

from config.model import Stack
from tasks.archive import TarStats, UnsafeArchive, check_member, compression_of, unpack
from tasks.layout import is_archive_key
from tasks.manifest import Digest, Manifest, ObjectEntry
from tasks.repositories import Repository, open_repository

CREATE_TABLE = re.compile(r"CREATE TABLE\s+(?:IF NOT EXISTS\s+)?(\w+)\.(\w+)\s*\(", re.IGNORECASE)


def check_object(repo: Repository, entry: ObjectEntry, checksums: bool = True) -> str | None:
    """What is wrong with one object, or None.

    Every object: present, with the manifest's size. An archive is always read through and walked
    member by member (a corrupt stream or an unsafe member is found whatever ``checksums`` says).
    ``checksums=False`` only skips comparing the SHA-256, and reading the objects that are not
    archives. The one validator of restore, cold restore and verify.
    """
    info = repo.stat(entry.key)
    if info is None:
        return f"{entry.key}: missing"
    if info.size != entry.size:
        return f"{entry.key}: size {info.size}, manifest says {entry.size}"
    archive = is_archive_key(entry.key)
    if not checksums and not archive:
        return None
    digest = Digest()
    try:
        with repo.get(entry.key) as chunks:
            stream = digest.through(chunks)
            if archive:
                for _ in unpack(stream, compression_of(entry.key), TarStats()):
                    pass
            for _ in stream:  # whatever the archive walk left unread
                pass
    except UnsafeArchive as exc:
        return f"{entry.key}: unsafe archive: {exc}"
    except Exception as exc:
        return f"{entry.key}: unreadable: {exc}"
    if checksums and digest.sha256 != entry.sha256:
        return f"{entry.key}: SHA-256 mismatch (stored {digest.sha256[:16]}…, manifest {entry.sha256[:16]}…)"
    return None


def with_parts(objects: list[ObjectEntry]) -> list[ObjectEntry]:
    """The objects and, for tables stored component by component (incremental mode), every
    shared component they reference, once each, as entries of their stored bytes."""
    out = list(objects)
    seen = {o.key for o in objects}
    for o in objects:
        for part in o.parts or []:
            if part.key not in seen:
                seen.add(part.key)
                out.append(ObjectEntry(key=part.key, size=part.stored_size, sha256=part.stored_sha256,
                                       component=o.component, compression=part.compression))
    return out


def check_part_paths(entry: ObjectEntry) -> str | None:
    """A table stored component by component is extracted under the paths its manifest entry
    lists: each must stay inside the table's folder, as an archive's members must."""
    for part in entry.parts or []:
        try:
            check_member(tarfile.TarInfo(part.path))
        except UnsafeArchive as exc:
            return f"{entry.key}: unsafe archive: {exc}"
    return None


def check_objects(stack: Stack, objects: list[ObjectEntry], *, checksums: bool = True,
                  workers: int = 4) -> list[str]:
    """Check objects in parallel, one repository connection per worker; the shared components
    of incremental tables too, and the paths they are extracted under."""
    unsafe = [p for o in objects if (p := check_part_paths(o))]
    objects = with_parts(objects)

    def run(batch: list[ObjectEntry]) -> list[str]:
        with open_repository(stack) as repo:
            return [p for e in batch if (p := check_object(repo, e, checksums))]

    batches = [objects[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        return sorted(unsafe + [p for problems in pool.map(run, batches) for p in problems])


def stored_objects(manifest: Manifest) -> list[ObjectEntry]:
    """Everything a backup needs from the repository: its objects and its copy of the ES
    snapshot repository (shared blobs included)."""
    return manifest.objects + ((manifest.elasticsearch.files or []) if manifest.elasticsearch else [])


def check_schema(manifest: Manifest, keyspaces: list[str]) -> list[str]:
    """The recorded CQL must create every table the backup holds archives for."""
    problems = []
    recorded = manifest.cassandra.keyspaces if manifest.cassandra else {}
    for ks in keyspaces:
        if ks not in recorded:
            problems.append(f"the backup has no schema for keyspace {ks!r}")
            continue
        created = {t for k, t in CREATE_TABLE.findall(recorded[ks].schema_cql) if k == ks}
        archived = {o.table for o in manifest.objects if o.keyspace == ks and o.table}
        if not created:
            problems.append(f"schema of {ks!r} does not parse: no CREATE TABLE statement")
        elif archived - created:
            problems.append(f"schema of {ks!r} lacks tables {sorted(archived - created)}")
    return problems


@task(name="validate backup", task_run_name="validate {manifest.backup_id}", cache_policy=NO_CACHE)
def check_objects_task(stack: Stack, manifest: Manifest, checksums: bool = True) -> list[str]:
    return check_objects(stack, manifest.objects, checksums=checksums)
