"""What a table holds, two ways: row digests (a full CQL read) and SSTable fingerprints (no read).

A row digest reads every row at consistency ALL: exact, and costly on a production cluster, so a
default backup never computes one (issue 9); the restore drill and backups asked for it
(``record_digests``) do. An SSTable fingerprint (``tasks/table_archive.py``) is read from file
sizes and Cassandra's own ``*-Digest.crc32`` files: it tells, without reading a row, whether a
live table still holds exactly the SSTables a backup archived.
"""
from __future__ import annotations

import hashlib
import posixpath
from collections import Counter

from cassandra import ConsistencyLevel
from cassandra.cluster import Session
from cassandra.query import SimpleStatement

from config.model import CassandraNodeSettings, cql_identifier
from tasks.hosts import Host
from tasks.table_archive import fingerprint_lines

#: ``$1``… are table folders; prints "<folder>\t<Data.db size> <crc32>" per SSTable.
_LIST_SSTABLES = r'''for d in "$@"; do
  for f in "$d"/*-Data.db; do
    [ -e "$f" ] || continue
    s=$(stat -c %s "$f" 2>/dev/null) || s=gone
    c=$(cat "${f%Data.db}Digest.crc32" 2>/dev/null) || c=-
    printf '%s\t%s %s\n' "$d" "$s" "${c:--}"
  done
done'''


def table_digest(session: Session, keyspace: str, table: str) -> dict:
    """Row count and an order-independent digest of a table's content (sum of row SHA-256s).

    Read at consistency ALL so that every replica agrees; what the restore drill compares.
    """
    stmt = SimpleStatement(f"SELECT * FROM {cql_identifier(keyspace)}.{cql_identifier(table)}",
                           fetch_size=1000, consistency_level=ConsistencyLevel.ALL)
    total, rows = 0, 0
    for row in session.execute(stmt, timeout=600):
        total += int.from_bytes(hashlib.sha256(repr(tuple(row)).encode()).digest(), "big")
        rows += 1
    return {"rows": rows, "digest": f"{total % (1 << 256):064x}"}


def live_fingerprints(host: Host, settings: CassandraNodeSettings, keyspace: str,
                      table_dirs: dict[str, str]) -> dict[str, Counter[str]]:
    """Per table, the fingerprints of its live SSTables on the node (one per data dir holding
    any), as a multiset comparable with a backup's archives of that node.

    ``table_dirs``: table name -> ``<table>-<id>`` of the live table. Call after a flush, so that
    rows still in memtables are in SSTables too. Reads no row: ``stat`` and small files only.
    """
    folders = {posixpath.join(d, cql_identifier(keyspace), table_dir): table
               for d in settings.data_dirs for table, table_dir in table_dirs.items()}
    out = host.run(host.privileged(["sh", "-c", _LIST_SSTABLES, "sh", *sorted(folders)]), timeout=300).text
    lines: dict[str, list[str]] = {}
    for line in out.splitlines():
        folder, _, sstable = line.partition("\t")
        if folder in folders:
            lines.setdefault(folder, []).append(sstable)
    found: dict[str, Counter[str]] = {t: Counter() for t in table_dirs}
    for folder, sstables in lines.items():
        found[folders[folder]][fingerprint_lines(sstables)] += 1
    return found


def flush(host: Host, settings: CassandraNodeSettings, keyspace: str) -> None:
    """Write the keyspace's memtables to SSTables on the node (``nodetool flush``)."""
    host.run([*settings.nodetool, "flush", "--", cql_identifier(keyspace)], timeout=600)
