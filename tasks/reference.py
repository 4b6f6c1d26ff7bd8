"""Backups made by the reference guide's own script, read as if they were ours.

The guide archives each table's snapshot folder as ``<keyspace>/<table>-<id>.tbz`` (bzip2 tar of
the snapshot's files, Cassandra's ``schema.cql`` inside) under ``<host>/<date>/``. Given such a
folder, we build an in-memory manifest — sizes and SHA-256 computed now, the schema taken from the
archives — so the restore flow validates and loads it like any backup of ours.
"""
from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from tasks.manifest import Manifest, ObjectEntry, utcnow

SUFFIXES = (".tbz", ".tar.bz2", ".tbz2")


def _schema_of(archive: Path) -> str:
    with tarfile.open(archive, mode="r:bz2") as tar:
        for member in tar:
            if member.isfile() and member.name.lstrip("./") == "schema.cql":
                return tar.extractfile(member).read().decode()
    return ""


def reference_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"reference backup folder {folder} does not exist")
    objects, schemas = [], {}
    for archive in sorted(folder.glob("*/*")):
        if not archive.name.endswith(SUFFIXES) or not archive.is_file():
            continue
        keyspace = archive.parent.name
        table_dir = archive.name
        for suffix in SUFFIXES:
            table_dir = table_dir.removesuffix(suffix)
        digest = hashlib.sha256()
        with open(archive, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        objects.append(ObjectEntry(
            key=archive.relative_to(folder).as_posix(), size=archive.stat().st_size,
            sha256=digest.hexdigest(), component="cassandra", node=folder.parent.name or "node",
            keyspace=keyspace, table=table_dir.rpartition("-")[0] or table_dir,
            table_dir=table_dir, compression="bzip2"))
        schema = _schema_of(archive)
        if schema:
            schemas.setdefault(keyspace, []).append(schema.strip().rstrip(";") + ";")
    if not objects:
        raise FileNotFoundError(f"{folder}: no <keyspace>/<table>.tbz archive found")
    now = utcnow()
    return Manifest(
        backup_id=f"reference-{folder.name}", kind="cold", stack="reference", started_at=now,
        finished_at=now, components=["cassandra"], objects=objects, label=str(folder),
        cassandra={"keyspaces": {ks: {"schema_cql": "\n".join(parts),
                                      "tables": {o.table: "" for o in objects if o.keyspace == ks}}
                                 for ks, parts in schemas.items()},
                   "nodes": []},
    )

