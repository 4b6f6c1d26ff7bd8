"""What a restore drill compares the scratch keyspace with, table by table, and the verdict.

The drill restores a backup under a scratch name and reads every scratch row (``table_digest``).
The expected digest of each table comes from one of two independent sources:

1. **recorded**: the digests the backup read from the live keyspace when it was made
   (``record_digests=True``: the stack file's ``cassandra.record_digests``, or the scheduled
   verification backup). Exactly the drill of earlier versions.
2. **live, unchanged since the backup**: a default backup reads no row, but records per node and
   table the SSTable fingerprint of what it archived. After a flush, a live table whose SSTables on
   every node still have the backup's fingerprints holds exactly the backed-up rows, so its own
   digest, read now at consistency ALL, is what the scratch copy must equal. The fingerprints are
   taken again (flushed) after that read: a table written meanwhile is not compared rather than
   reported different.

A table with neither (written since a default backup, or an older manifest without fingerprints)
cannot be proved: its scratch digest is reported, and the drill fails unless asked to accept that
(``require_proof=False``). Any compared table whose rows differ fails the drill.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

from config.model import Stack
from tasks import cassandra
from tasks.digests import flush, live_fingerprints, table_digest
from tasks.hosts import host_for
from tasks.manifest import Manifest, TableDigest

Basis = Literal["recorded", "live", "none"]


@dataclass(frozen=True)
class TableVerdict:
    table: str
    basis: Basis  # where the expected digest came from
    restored: TableDigest
    expected: TableDigest | None

    @property
    def content(self) -> str:
        if self.expected is None:
            return "not compared (changed since the backup)"
        return "identical" if self.restored == self.expected else "DIFFERENT"


def backup_fingerprints(manifest: Manifest, keyspace: str) -> dict[tuple[str, str], Counter[str]] | None:
    """(node, table) -> the fingerprints of the archives holding SSTables; None when the
    manifest predates fingerprints."""
    out: dict[tuple[str, str], Counter[str]] = {}
    for o in manifest.objects:
        if o.keyspace != keyspace or o.table is None or o.node is None:
            continue
        if o.fingerprint is None:
            return None
        if o.sstables:
            out.setdefault((o.node, o.table), Counter())[o.fingerprint] += 1
    return out


def _unchanged(stack: Stack, keyspace: str, tables: list[str], table_dirs: dict[str, str],
               expected: dict[tuple[str, str], Counter[str]]) -> set[str]:
    """Tables whose live SSTables, flushed, carry on every node the backup's fingerprints."""
    same = set(tables)
    for node in stack.nodes_with("cassandra"):
        settings = stack.cassandra.settings_for(node.name)
        with host_for(stack, node) as host:
            flush(host, settings, keyspace)
            live = live_fingerprints(host, settings, keyspace, table_dirs)
        same -= {t for t in tables if live.get(t, Counter()) != expected.get((node.name, t), Counter())}
    return same


def _table_dirs(session, keyspace: str, tables: list[str]) -> dict[str, str]:
    """table -> its data folder name (``<table>-<id hex>``); tables the live keyspace lacks are left out."""
    ids = {row.table_name: row.id for row in session.execute(  # the driver's metadata lacks them
        "SELECT table_name, id FROM system_schema.tables WHERE keyspace_name = %s", [keyspace])}
    return {t: f"{t}-{ids[t].hex}" for t in tables if ids.get(t)}


def provable_tables(stack: Stack, manifest: Manifest, keyspace: str, tables: list[str]) -> set[str]:
    """Tables a drill of a digest-free backup can prove: their live SSTables are still the backed-up
    ones. Asked before the drill restores anything, so a drill bound to fail fails in seconds."""
    expected = backup_fingerprints(manifest, keyspace)
    if expected is None or keyspace not in stack.cassandra.keyspaces:
        return set()
    with cassandra.cql_session(stack, timeout=600) as session:
        table_dirs = _table_dirs(session, keyspace, tables)
    return _unchanged(stack, keyspace, list(table_dirs), table_dirs, expected)


def live_expectations(stack: Stack, manifest: Manifest, keyspace: str,
                      tables: list[str]) -> dict[str, TableDigest]:
    """Digests of the live tables that provably still hold the backed-up rows (module docstring)."""
    expected = backup_fingerprints(manifest, keyspace)
    if expected is None or keyspace not in stack.cassandra.keyspaces:
        return {}
    with cassandra.cql_session(stack, timeout=600) as session:
        session.cluster.refresh_schema_metadata()
        if keyspace not in session.cluster.metadata.keyspaces:
            return {}
        table_dirs = _table_dirs(session, keyspace, tables)
        before = _unchanged(stack, keyspace, list(table_dirs), table_dirs, expected)
        digests = {t: TableDigest(**table_digest(session, keyspace, t)) for t in sorted(before)}
    after = _unchanged(stack, keyspace, sorted(before), table_dirs, expected)
    return {t: d for t, d in digests.items() if t in after}


def verdicts(restored: dict[str, TableDigest], recorded: dict[str, TableDigest] | None,
             live: dict[str, TableDigest]) -> list[TableVerdict]:
    out = []
    for table, got in sorted(restored.items()):
        if recorded is not None:
            out.append(TableVerdict(table, "recorded", got, recorded.get(table)))
        elif table in live:
            out.append(TableVerdict(table, "live", got, live[table]))
        else:
            out.append(TableVerdict(table, "none", got, None))
    return out
