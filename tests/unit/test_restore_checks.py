"""Checks a restore makes before its first change: replication against the live topology."""
from __future__ import annotations

from tasks.restore_checks import replication_problems
from tasks.rollback import rollback_tag
from tasks.staging import short_hash

THREE_IN_DC1 = [{"dc": "datacenter1"}] * 3


def test_network_topology_fits_the_cluster():
    assert replication_problems({"class": "NetworkTopologyStrategy", "datacenter1": 3}, THREE_IN_DC1) == []
    assert replication_problems({"class": "NetworkTopologyStrategy", "replication_factor": 2},
                                THREE_IN_DC1) == []


def test_unknown_datacenter_is_named_with_the_ones_that_exist():
    problems = replication_problems({"class": "NetworkTopologyStrategy", "dc-east": 3}, THREE_IN_DC1)
    assert problems == ["cassandra.replication: datacenter 'dc-east' is not in the cluster "
                        "(it has datacenter1)"]


def test_more_replicas_than_nodes_is_refused():
    assert replication_problems({"class": "NetworkTopologyStrategy", "datacenter1": 4}, THREE_IN_DC1) == [
        "cassandra.replication: datacenter1: 4 replicas but the datacenter has 3 node(s)"]
    assert replication_problems({"class": "SimpleStrategy", "replication_factor": 5}, THREE_IN_DC1) == [
        "cassandra.replication: replication_factor 5 but the cluster has 3 node(s)"]


def test_class_typo_is_refused_here_too():
    (problem,) = replication_problems({"class": "NetworkTopologyStrateg", "datacenter1": 3}, THREE_IN_DC1)
    assert "NetworkTopologyStrateg" in problem


def test_rollback_tag_is_a_valid_snapshot_tag_stable_per_keyspace():
    tag = rollback_tag("TheHive")
    assert tag == rollback_tag("thehive") and tag.startswith("rb-") and len(tag) == 13
    assert tag != rollback_tag("thehive_copy")
    assert short_hash("x") == short_hash("x") and len(short_hash("x")) == 12
