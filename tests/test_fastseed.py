"""Fast seeding (offline SSTables + nodetool import) gives exactly the rows the CQL seeder would."""
from __future__ import annotations

import shutil
import time

import pytest

from tests.stack import fastseed, seed

KEYSPACE = "fastseed_test"
SIZE_MB = 20


def expected_rows(size_mb: float, seed_value: int) -> dict[str, list[bytes]]:
    """Per table, the row hashes ``seed.seed_cassandra`` would insert for this size and seed."""
    budget = int(size_mb * 1024 * 1024)
    return {table: [seed._row_hash(*row) for row in
                    seed._rows(table, seed_value, int(budget * seed._SHARES.get(table, 0)))]
            for table in seed.JANUSGRAPH_TABLES}


def drop(cluster, session) -> None:
    """Drop the keyspace and its auto-snapshot ("dropped-..."), so no other test sees either."""
    session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}", timeout=120)
    session.cluster.shutdown()
    for node in cluster.nodes:
        shutil.rmtree(node.data_dir / KEYSPACE, ignore_errors=True)


def test_fast_seed_three_nodes_rf3(cluster3):
    t0 = time.monotonic()
    counts = fastseed.fast_seed(cluster3, KEYSPACE, size_mb=SIZE_MB, seed=7)
    elapsed = time.monotonic() - t0
    session = cluster3.session()
    try:
        expected = expected_rows(SIZE_MB, 7)
        assert counts == {t: len(h) for t, h in expected.items()}
        assert counts["edgestore"] > 10_000 and counts["graphindex"] > 5_000
        for table in seed.JANUSGRAPH_TABLES:
            n = session.execute(f"SELECT COUNT(*) FROM {KEYSPACE}.{table}", timeout=120).one()[0]
            assert n == counts[table], table
        # Byte-identical to what the CQL seeder inserts for the same seed and size.
        for table in ("edgestore", "graphindex", "txlog"):
            assert seed.table_fingerprint(session, KEYSPACE, table) == (
                len(expected[table]), seed._digest_of_sorted(expected[table])), table
        replication = session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", [KEYSPACE]).one()[0]
        assert replication["dc1"] == "3"
        # Every node imported every table itself (RF 3 on 3 nodes: each holds all rows).
        for node in cluster3.nodes:
            data = (node.data_dir / KEYSPACE).glob("*/*-Data.db")
            assert {p.parent.name.rsplit("-", 1)[0] for p in data} == set(seed.JANUSGRAPH_TABLES), node.name
    finally:
        drop(cluster3, session)
    # ~35 s on an idle 2-core machine; not asserted: the machine is shared with other test stacks.
    print(f"fast_seed of {SIZE_MB} MB on 3 nodes: {elapsed:.0f}s")


def test_fast_seed_refuses_rf_below_node_count(cluster3):
    with pytest.raises(ValueError, match="RF = number of nodes"):
        fastseed.fast_seed(cluster3, KEYSPACE, size_mb=1,
                           replication={"class": "NetworkTopologyStrategy", "dc1": 1})
