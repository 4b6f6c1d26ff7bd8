"""Hot-backup throughput of the Cassandra component, per node count and per compression.

    python -m benchmarks.throughput [--size-mb 1024] [--nodes 1,3] [--compressions zstd,gzip,bzip2,none]

Starts its own real stack (Cassandra 4.1 on 1 and 3 nodes, sshd; addresses 127.0.3.x, JMX ports
+30000, so it never collides with the test stacks of 127.0.0.x/127.0.1.x/127.0.2.x/127.0.4.x) under a
temp dir, fast-seeds the ``thehive`` keyspace (``tests.stack.fastseed``: offline SSTables + nodetool
import, RF = nodes), runs ``hot_backup(components=["cassandra"])`` into a fresh local repository for
every (nodes, compression), and prints one table with the figures side by side. Everything is stopped
and removed at the end (``--keep`` keeps the files).

``--size-mb`` counts row bytes as ``tests.stack.seed`` does (key + column1 + value); the LZ4 SSTables
a node holds are about half of that, and "raw MiB" below is what was archived: every node's SSTables
(3 nodes with RF 3 archive three copies).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")

NET = "127.0.3"
JMX_OFFSET = 30000
KEYSPACE = "thehive"
COMPRESSIONS = ("zstd", "gzip", "bzip2", "none")
MIB = 1024 * 1024


def _csv(kind, allowed=None):
    def parse(text: str):
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        if not items or (allowed and set(items) - set(allowed)):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {allowed or kind.__name__}")
        return items
    return parse


def start_and_seed(real_stack, nodes: int, size_mb: int, seed: int) -> tuple:
    """The harness cluster of ``nodes`` nodes (1 or 3), started and fast-seeded: (cluster, a line
    saying how long each took and what the keyspace holds on disk, its bytes per node)."""
    from tests.stack.fastseed import fast_seed

    t0 = time.monotonic()
    cluster = real_stack.cassandra3 if nodes == 3 else real_stack.cassandra1
    started = time.monotonic() - t0
    t0 = time.monotonic()
    rows = fast_seed(cluster, KEYSPACE, size_mb=size_mb, seed=seed)
    seeded = time.monotonic() - t0
    on_disk = [du_bytes(n.data_dir / KEYSPACE) for n in cluster.nodes]
    line = (f"{nodes} node(s): started in {started:.0f}s; fast_seed {size_mb} MiB of rows "
            f"({sum(rows.values())} rows, RF {min(3, nodes)}) in {seeded:.0f}s; keyspace on disk "
            f"per node: {', '.join(f'{x / MIB:.0f}' for x in on_disk)} MiB")
    return cluster, line, on_disk


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=1024, help="row bytes to seed, MiB (default 1024)")
    p.add_argument("--nodes", type=_csv(int, (1, 3)), default=[1, 3], help="node counts: 1,3")
    p.add_argument("--compressions", type=_csv(str, COMPRESSIONS), default=list(COMPRESSIONS),
                   help="zstd,gzip,bzip2,none")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--tables-per-node", type=int, default=2, help="hot_backup's tables_per_node")
    p.add_argument("--root", type=Path, default=None, help="stack folder (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the stack folder at the end")
    p.add_argument("--log-level", default="WARNING", help="Prefect log level (default WARNING)")
    return p.parse_args(argv)


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=False).stdout
    return int(out.split()[0]) if out.strip() else 0


def check_disk(root: Path, size_mb: int, nodes: list[int]) -> None:
    """On disk: ~0.5 x rows per node (LZ4), a staging copy, one uncompressed backup at a time."""
    per_node = size_mb * MIB * 0.55
    needed = per_node * (sum(nodes) + 1 + max(nodes)) + 2 * 1024 * MIB
    free = shutil.disk_usage(root).free
    print(f"disk: {free / 2**30:.1f} GiB free under {root}, about {needed / 2**30:.1f} GiB needed", flush=True)
    if free < needed:
        raise SystemExit(f"not enough disk space under {root}")


def table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) for v, w in zip(values, widths, strict=True))

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def measure(real_stack, cluster, nodes: int, compression: str, args) -> dict:
    from config import load_stack
    from flows.hot_backup import hot_backup
    from tasks.manifest import read_manifest
    from tasks.repositories import open_repository

    # The flow's driver sessions do not pin the protocol version: one downgrade warning per session.
    logging.getLogger("cassandra.cluster").setLevel(logging.ERROR)
    name = f"bench-{nodes}n-{compression}"
    repository = real_stack.repository("local", name)
    data = real_stack.stack_data(cluster, repository, name=name, with_elasticsearch=False,
                                 storage="archive")  # per-table archives: what the compressions compare on
    path = real_stack.write_stack_file(real_stack.root / "stacks" / f"{name}.yaml", data)
    wall0 = time.monotonic()
    result = hot_backup(stack=str(path), components=["cassandra"], compression=compression,
                        tables_per_node=args.tables_per_node, label=name)
    wall = time.monotonic() - wall0
    with open_repository(load_stack(path)) as repo:
        manifest = read_manifest(repo, result["backup_id"])
    raw = sum(o.raw_size if o.raw_size is not None else o.size for o in manifest.objects)
    stored = manifest.size
    seconds = manifest.timings["cassandra"]
    shutil.rmtree(repository["path"], ignore_errors=True)  # one backup on disk at a time
    return {"nodes": nodes, "compression": compression, "raw MiB": f"{raw / MIB:.1f}",
            "stored MiB": f"{stored / MIB:.1f}", "ratio": f"{stored / raw:.3f}" if raw else "-",
            "seconds": f"{seconds:.1f}", "MiB/s raw": f"{raw / MIB / seconds:.1f}" if seconds else "-",
            "_rate": raw / MIB / seconds if seconds else 0.0, "_wall": wall,
            "tables": sum(1 for o in manifest.objects if o.table)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", args.log_level)
    from prefect.testing.utilities import prefect_test_harness

    from tests.stack.stack import Layout, RealStack

    made_root = args.root is None
    root = Path(tempfile.mkdtemp(prefix="thb-bench-")) if made_root else args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    check_disk(root, args.size_mb, args.nodes)
    cpus = os.cpu_count()
    print(f"CPUs: {cpus}; load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"Everything (Cassandra nodes, sshd, the flow, the local repository) shares this one "
          f"{cpus}-core machine; the nodes are JVMs on loopback ({NET}.x).", flush=True)

    real_stack = RealStack(root, Layout(net=NET, jmx_offset=JMX_OFFSET))
    results: list[dict] = []
    seeding: list[str] = []
    failed = True
    try:
        with prefect_test_harness(server_startup_timeout=180):
            for nodes in args.nodes:
                cluster, line, _ = start_and_seed(real_stack, nodes, args.size_mb, args.seed)
                seeding.append(line)
                print(line, flush=True)
                for compression in args.compressions:
                    r = measure(real_stack, cluster, nodes, compression, args)
                    results.append(r)
                    print(f"  {nodes} node(s) {compression}: {r['raw MiB']} MiB raw -> {r['stored MiB']} "
                          f"MiB in {r['seconds']}s ({r['MiB/s raw']} MiB/s; flow wall {r['_wall']:.0f}s)",
                          flush=True)
                cluster.stop()  # the next node count runs without this cluster's JVMs
        failed = False
    finally:
        real_stack.stop()
        if failed:
            print(f"FAILED: the stack folder (node logs) is kept in {root}", file=sys.stderr)
        elif made_root and not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    for r in results:
        base = next((x for x in results if x["nodes"] == r["nodes"] and x["compression"] == "zstd"), None)
        r["speed vs zstd"] = f"{r['_rate'] / base['_rate']:.2f}x" if base and base["_rate"] else "-"
    print()
    print(f"Hot backup (cassandra component) of a {args.size_mb} MiB keyspace (row bytes; seed "
          f"{args.seed}), tables_per_node={args.tables_per_node}, local repository on the same disk")
    print(f"CPUs: {cpus} — nodes, SSH, flow and repository all share this one machine")
    for line in seeding:
        print(f"  {line}")
    print()
    print(table(results, ["nodes", "compression", "raw MiB", "stored MiB", "ratio", "seconds",
                          "MiB/s raw", "speed vs zstd"]))
    print()
    print("raw MiB: sum of raw_size in the manifest (every node's SSTables, LZ4 already); ratio: "
          "stored/raw; seconds: the flow's cassandra timing (snapshot, archive, clearsnapshot).")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
