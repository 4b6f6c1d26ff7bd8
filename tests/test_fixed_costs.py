"""Fixed costs of a hot backup on the real 1-node Cassandra 4.1: nodetool JVM starts and SSH
connections counted per node, wall time printed (issue 9, "fixed costs down")."""
from __future__ import annotations

import collections
import time

import pytest

from flows.hot_backup import hot_backup
from tasks import cassandra, hosts, openssh
from tasks.manifest import read_manifest
from tasks.repositories import open_repository
from tests.stack import seed

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def small1(real_stack):
    """The 1-node cluster with a small TheHive-like keyspace (~1 MiB of rows)."""
    cluster = real_stack.cassandra1
    session = cluster.session()
    try:
        seed.create_keyspace(session, "thehive", {"class": "NetworkTopologyStrategy", "dc1": 1})
        if session.execute("SELECT key FROM thehive.edgestore LIMIT 1").one() is None:
            seed.seed_cassandra(session, "thehive", size_mb=1, seed=7)
    finally:
        session.cluster.shutdown()
    return cluster


def test_nodetool_and_ssh_counts_of_a_small_hot_backup(make_stack, small1, monkeypatch, capsys):
    path, stack = make_stack("local", cluster=small1)
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    connects: collections.Counter[str] = collections.Counter()
    masters: collections.Counter[str] = collections.Counter()
    original_nodetool, original_connect = cassandra.nodetool, hosts.connect_ssh
    original_master = openssh.open_streams

    def counting_nodetool(host, settings, *args, **kwargs):
        calls[(host.name, args[0])] += 1
        return original_nodetool(host, settings, *args, **kwargs)

    def counting_connect(address, settings):
        connects[address] += 1
        return original_connect(address, settings)

    monkeypatch.setattr(cassandra, "nodetool", counting_nodetool)
    def counting_master(address, settings, host_key):
        masters[address] += 1
        return original_master(address, settings, host_key)

    monkeypatch.setattr(hosts, "connect_ssh", counting_connect)
    monkeypatch.setattr(openssh, "open_streams", counting_master)
    t0 = time.monotonic()
    result = hot_backup(stack=str(path), components=["cassandra"])
    seconds = time.monotonic() - t0
    with capsys.disabled():
        print(f"\nfixed costs: {seconds:.1f}s wall, nodetool {sum(calls.values())} "
              f"{dict(sorted(calls.items()))}, SSH connections {dict(connects)}, OpenSSH masters {dict(masters)}")
    with open_repository(stack) as repo:
        manifest = read_manifest(repo, result["backup_id"])
    assert {o.table for o in manifest.objects if o.table} >= {"edgestore", "graphindex"}
    node = small1.nodes[0].name
    assert calls[(node, "snapshot")] == 1 and calls[(node, "clearsnapshot")] == 1
    assert calls[(node, "listsnapshots")] <= 1 and calls[(node, "status")] == 1
    assert sum(calls.values()) <= 4
    assert connects[small1.nodes[0].address] == 1  # one SSH connection for the whole run (commands)
    assert masters[small1.nodes[0].address] == 1  # and one for its streams (tasks/openssh.py)
