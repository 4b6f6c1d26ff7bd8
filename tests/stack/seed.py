"""TheHive-like data at chosen sizes, deterministic from a seed, plus fingerprints to compare restores.

TheHive 5 keeps its graph in JanusGraph tables of one Cassandra keyspace, an Elasticsearch index that
JanusGraph derives from the graph (``thehive_global``), and attachments as files or bucket objects. A
backup/restore test needs all three with realistic shapes (few wide tables, many small ones; values
that compress like JSON) and a way to prove that what came back is byte-identical, whatever the order
in which Cassandra or Elasticsearch return it. Run ``python -m tests.stack.seed`` for a selftest
against a real Cassandra, Elasticsearch and the TheHive stand-in.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import struct
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cassandra.cluster import Session
    from elasticsearch import Elasticsearch

JANUSGRAPH_TABLES = ("edgestore", "edgestore_lock_", "graphindex", "graphindex_lock_", "janusgraph_ids",
                     "system_properties", "system_properties_lock_", "systemlog", "txlog")
INDEX = "thehive_global"
INDEX_PATTERN = "thehive_global*"

_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
# Bulk of the bytes goes to the two wide tables, as in a real TheHive keyspace.
_SHARES = {"edgestore": 0.65, "graphindex": 0.35}
_COLUMNS_PER_KEY = {"edgestore": (2, 12), "graphindex": (1, 4)}
# "A few rows" in the bookkeeping tables (JanusGraph keeps them small).
_SMALL_ROWS = {"edgestore_lock_": 2, "graphindex_lock_": 2, "janusgraph_ids": 6, "system_properties": 12,
               "system_properties_lock_": 2, "systemlog": 4, "txlog": 16}
_ODD = 0x9E3779B97F4A7C15  # odd multiplier: a bijection on 64-bit ints, so keys never collide
_WORDS = (
    "alert", "case", "task", "observable", "artifact", "ioc", "phishing", "malware", "ransomware", "domain",
    "url", "hash", "ip", "mail", "analyst", "severity", "tlp", "pap", "status", "open", "resolved",
    "duplicate", "false", "positive", "true", "incident", "report", "investigation", "endpoint", "firewall",
    "proxy", "dns", "beacon", "command", "control", "lateral", "movement", "credential", "exfiltration",
    "sample", "sandbox", "yara", "sigma", "rule", "detection", "customer", "organisation", "tenant",
    "escalated", "triage", "containment", "eradication", "recovery", "timeline", "evidence", "attachment",
    "comment", "procedure", "mitre", "attack", "technique", "tactic", "persistence", "privilege", "escalation",
    "defense", "evasion", "discovery", "collection",
)
_LABELS = ("Case", "Alert", "Task", "Observable", "Log", "User", "Organisation", "CustomField", "Tag")


def cql_identifier(name: str) -> str:
    """``name`` double-quoted after validation: keyspace and table names end up inside CQL text."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a valid CQL identifier: {name!r}")
    return f'"{name}"'


def _cql_string(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def create_keyspace(session: Session, keyspace: str, replication: dict[str, Any]) -> None:
    """Create the keyspace and the nine JanusGraph tables as JanusGraph's CQL backend does."""
    ks = cql_identifier(keyspace)
    rep = ", ".join(f"{_cql_string(k)}: {_cql_string(v)}" for k, v in replication.items())
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{{rep}}}")
    for table in JANUSGRAPH_TABLES:
        session.execute(
            f"CREATE TABLE IF NOT EXISTS {ks}.{cql_identifier(table)} "
            "(key blob, column1 blob, value blob, PRIMARY KEY (key, column1)) "
            "WITH compression = {'class': 'LZ4Compressor'}")


def _value(rng: random.Random, size: int) -> bytes:
    """JSON text of about ``size`` bytes: words compress well, the hex hash does not, like TheHive data."""
    doc: dict[str, object] = {
        "_label": rng.choice(_LABELS), "_createdAt": 1_600_000_000_000 + rng.getrandbits(35),
        "tlp": rng.randrange(4), "pap": rng.randrange(4), "tags": rng.sample(_WORDS, 3),
        "data": f"{rng.getrandbits(256):064x}", "description": "",
    }
    room = max(0, size - len(json.dumps(doc, separators=(",", ":"))))
    doc["description"] = " ".join(rng.choices(_WORDS, k=room // 7 + 1))[:room]
    return json.dumps(doc, separators=(",", ":")).encode()


def _key(seed: int, table_no: int, i: int, width: int) -> bytes:
    scrambled = ((((seed & 0xFFFFFF) << 40) | (table_no << 36) | i) * _ODD) % 2**64
    return struct.pack(">Q", scrambled) + struct.pack(">Q", i)[: width - 8]


def _rows(table: str, seed: int, target_bytes: int) -> Iterator[tuple[bytes, bytes, bytes]]:
    """Rows of one table, several ``column1`` per key; wide tables stop once ``target_bytes`` is reached."""
    rng = random.Random(f"{seed}:{table}")
    table_no = JANUSGRAPH_TABLES.index(table)
    wide = table in _SHARES
    width = 16 if table == "graphindex" else 8
    written = rows = i = 0
    while (written < target_bytes) if wide else (rows < _SMALL_ROWS[table]):
        key = _key(seed, table_no, i, width)
        lo, hi = _COLUMNS_PER_KEY.get(table, (1, 3))
        for j in range(rng.randint(lo, hi)):
            column1 = struct.pack(">HI", j, rng.getrandbits(32))
            value = _value(rng, rng.randint(512, 1536) if wide else rng.randint(100, 300))
            written += len(key) + len(column1) + len(value)
            rows += 1
            yield key, column1, value
        i += 1


def seed_cassandra(session: Session, keyspace: str, *, size_mb: float, seed: int = 0,
                   concurrency: int = 64) -> dict[str, int]:
    """Fill the JanusGraph tables with ~``size_mb`` MiB of rows; returns rows written per table.

    Writes are at consistency ALL, so every replica holds every row before a test snapshots any node.
    The keyspace must exist (``create_keyspace``); equal seeds and sizes give identical rows.
    """
    from cassandra import ConsistencyLevel
    from cassandra.concurrent import execute_concurrent

    if size_mb < 0:
        raise ValueError("size_mb must be >= 0")
    ks = cql_identifier(keyspace)
    statements = {}
    for table in JANUSGRAPH_TABLES:
        statements[table] = session.prepare(
            f"INSERT INTO {ks}.{cql_identifier(table)} (key, column1, value) VALUES (?, ?, ?)")
        statements[table].consistency_level = ConsistencyLevel.ALL
    budget = int(size_mb * 1024 * 1024)
    counts = dict.fromkeys(JANUSGRAPH_TABLES, 0)

    def work() -> Iterator[tuple[Any, tuple[bytes, bytes, bytes]]]:
        for table in JANUSGRAPH_TABLES:
            for row in _rows(table, seed, int(budget * _SHARES.get(table, 0))):
                counts[table] += 1
                yield statements[table], row

    for result in execute_concurrent(session, work(), concurrency=concurrency, results_generator=True):
        if not result.success:
            raise result.result_or_exc
    return counts


def _row_hash(*fields: bytes) -> bytes:
    h = hashlib.sha256()
    for field in fields:
        h.update(struct.pack(">I", len(field)))
        h.update(field)
    return h.digest()


def _digest_of_sorted(hashes: list[bytes]) -> str:
    hashes.sort()
    return hashlib.sha256(b"".join(hashes)).hexdigest()


def _scan(session: Session, keyspace: str, table: str, consistency: int | None):
    from cassandra import ConsistencyLevel
    from cassandra.query import SimpleStatement

    statement = SimpleStatement(
        f"SELECT key, column1, value FROM {cql_identifier(keyspace)}.{cql_identifier(table)}",
        fetch_size=2000,
        consistency_level=ConsistencyLevel.ALL if consistency is None else consistency)
    return session.execute(statement, timeout=60)


def table_fingerprint(session: Session, keyspace: str, table: str,
                      consistency: int | None = None) -> tuple[int, str]:
    """Row count and an order-independent SHA-256 of all (key, column1, value) rows.

    Reads at ALL by default: the cluster-wide view. That proves a restore byte-identical as a whole;
    it does not prove each replica on its own (a read at ALL may repair a replica while reading).
    """
    hashes = [_row_hash(r.key, r.column1, r.value) for r in _scan(session, keyspace, table, consistency)]
    return len(hashes), _digest_of_sorted(hashes)


def keyspace_fingerprint(session: Session, keyspace: str,
                         consistency: int | None = None) -> dict[str, tuple[int, str]]:
    return {t: table_fingerprint(session, keyspace, t, consistency) for t in JANUSGRAPH_TABLES}


def cluster_fingerprint(cluster, keyspace: str = "thehive") -> dict[str, tuple[int, str]]:
    """Every row of the keyspace's tables, read through a fresh session of the harness cluster."""
    session = cluster.session()
    try:
        return keyspace_fingerprint(session, keyspace)
    finally:
        session.cluster.shutdown()


def index_documents(session: Session, keyspace: str) -> Iterator[dict[str, Any]]:
    """One document per distinct edgestore key: the index TheHive would derive from its graph.

    A full scan returns each partition's rows together, in ``column1`` order, so grouping streams.
    """
    for key, rows in groupby(_scan(session, keyspace, "edgestore", None), key=lambda r: r.key):
        digest = hashlib.sha256()
        columns = 0
        for row in rows:
            digest.update(_row_hash(row.value))
            columns += 1
        yield {"_id": key.hex(), "key": key.hex(), "columns": columns, "digest": digest.hexdigest()}


def build_index(es: Elasticsearch, session: Session, keyspace: str, index: str = INDEX) -> int:
    """(Re)create ``index`` (1 shard, 0 replicas) from the keyspace; returns the documents indexed."""
    from elasticsearch import helpers

    es.indices.delete(index=index, ignore_unavailable=True)
    es.indices.create(index=index, settings={"number_of_shards": 1, "number_of_replicas": 0},
                      mappings={"properties": {"key": {"type": "keyword"}, "columns": {"type": "integer"},
                                               "digest": {"type": "keyword"}}})
    actions = ({"_index": index, "_id": doc["_id"],
                "_source": {k: v for k, v in doc.items() if k != "_id"}}
               for doc in index_documents(session, keyspace))
    indexed, _ = helpers.bulk(es, actions, chunk_size=1000)
    es.indices.refresh(index=index)
    return indexed


def index_fingerprint(es: Elasticsearch, pattern: str = INDEX_PATTERN) -> tuple[int, str]:
    """Count and digest of every document matching ``pattern``, regardless of the index's name.

    The name is left out on purpose: a rebuild may call it ``thehive_global1``; the content must match.
    """
    from elasticsearch import helpers

    es.indices.refresh(index=pattern, allow_no_indices=True, ignore_unavailable=True)
    hashes = [
        hashlib.sha256(json.dumps({"_id": hit["_id"], **hit["_source"]}, sort_keys=True).encode()).digest()
        for hit in helpers.scan(es, index=pattern, query={"query": {"match_all": {}}}, size=1000)
    ]
    return len(hashes), _digest_of_sorted(hashes)


def _attachments(count: int, size_kb: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """Random (incompressible, like PDFs and archives) content, filed under hash-named subdirectories."""
    for i in range(count):
        data = random.Random(f"{seed}:attachment:{i}").randbytes(size_kb * 1024)
        h = hashlib.sha256(data).hexdigest()
        yield f"{h[:2]}/{h[2:4]}/{h}", data


def seed_files(root: Path, *, count: int, size_kb: int, seed: int = 0) -> dict[str, str]:
    """Write attachments under ``root`` like TheHive's ``/opt/thp/thehive/files``; relative path -> sha256."""
    inventory = {}
    for rel, data in _attachments(count, size_kb, seed):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        inventory[rel] = hashlib.sha256(data).hexdigest()
    return inventory


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_fingerprint(root: Path) -> dict[str, str]:
    """Every regular file under ``root``: relative POSIX path -> sha256 (compare with ``seed_files``)."""
    return {p.relative_to(root).as_posix(): _sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def seed_bucket(s3_client: Any, bucket: str, *, count: int, size_kb: int, seed: int = 0) -> dict[str, str]:
    """Put the same attachments as ``seed_files`` into ``bucket`` (created if missing); key -> sha256."""
    from botocore.exceptions import ClientError

    try:
        s3_client.head_bucket(Bucket=bucket)
    except ClientError:
        region = s3_client.meta.region_name
        extra = ({"CreateBucketConfiguration": {"LocationConstraint": region}}
                 if region and region != "us-east-1" else {})
        s3_client.create_bucket(Bucket=bucket, **extra)
    inventory = {}
    for key, data in _attachments(count, size_kb, seed):
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
        inventory[key] = hashlib.sha256(data).hexdigest()
    return inventory


def bucket_fingerprint(s3_client: Any, bucket: str) -> dict[str, str]:
    """Every object in ``bucket``: key -> sha256 of its content."""
    inventory = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            h = hashlib.sha256()
            for chunk in s3_client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].iter_chunks(1 << 20):
                h.update(chunk)
            inventory[obj["Key"]] = h.hexdigest()
    return inventory
