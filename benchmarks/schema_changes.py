"""A restore's schema changes: the driver's wait after every statement against one coordinator
and one wait at the end (``tasks.cassandra.schema_session``).

    python -m benchmarks.schema_changes [--rounds 3]

Starts the harness's 3-node Cassandra 4.1 cluster on 127.0.3.x (never a test stack's /24), seeds
TheHive's JanusGraph tables, then, alternating the two ways in one run, creates a keyspace with
those tables and drops it (what the restore's scratch check and its DROP/CREATE each do) and prints
the best of ``--rounds`` for each, with the ratio.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from config import load_stack
from tasks.cassandra import cql_session, schema_session
from tasks.cassandra_restore import rewrite_schema


def _create_and_drop(open_session: Callable, schema_cql: str, name: str) -> float:
    """Keyspace, tables, drop: the schema_session waits for agreement as it closes."""
    t0 = time.monotonic()
    with open_session() as session:
        session.execute(f"CREATE KEYSPACE {name} WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': '3'}")
        for stmt in rewrite_schema(schema_cql, "thehive", name):
            session.execute(stmt)
        session.execute(f"DROP KEYSPACE {name}")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from tests.stack import seed
    from tests.stack.stack import Layout, RealStack

    with tempfile.TemporaryDirectory(prefix="thb-bench-ddl-") as tmp:
        real = RealStack(Path(tmp), Layout(net="127.0.3", jmx_offset=30000))
        try:
            cluster = real.cassandra3
            session = cluster.session()
            seed.create_keyspace(session, "thehive", {"class": "SimpleStrategy", "replication_factor": 3})
            seed.seed_cassandra(session, "thehive", size_mb=0.1, seed=1)
            schema_cql = session.cluster.metadata.keyspaces["thehive"].export_as_string()
            session.cluster.shutdown()
            path = real.write_stack_file(Path(tmp) / "stack.yaml",
                                         real.stack_data(cluster, real.repository("local", "bench")))
            stack = load_stack(path)
            ways: dict[str, Callable] = {
                "wait after every statement (driver default)": lambda: cql_session(stack, timeout=120),
                "one coordinator, one wait (schema_session)": lambda: schema_session(stack)}
            best = {name: float("inf") for name in ways}
            for r in range(args.rounds):
                for i, (name, way) in enumerate(ways.items()):
                    seconds = _create_and_drop(way, schema_cql, f"bench_{r}_{i}")
                    best[name] = min(best[name], seconds)
                    print(f"round {r + 1}: {name}: {seconds:.1f} s", flush=True)
            base = best["wait after every statement (driver default)"]
            for name, seconds in best.items():
                print(f"{name:48s} best {seconds:6.1f} s   x{seconds / base:.2f}")
        finally:
            real.stop()


if __name__ == "__main__":
    main()
