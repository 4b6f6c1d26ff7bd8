"""Snapshot steps are safe to retry (tasks/retry.py): a second call with the same tag or name,
as a task retry after a lost answer makes it, finishes with the first call's snapshot instead of
failing on "already exists". Real 3-node Cassandra and real Elasticsearch."""
from __future__ import annotations

import secrets

import pytest

from tasks import cassandra as cass
from tasks import elasticsearch as es_mod
from tasks.hosts import host_for

pytestmark = pytest.mark.usefixtures("seeded3")


def _folders(stack, node: str, tag: str) -> dict[str, str]:
    """Every file of the node's snapshot folders for ``tag``, with size and mtime: unchanged
    listings prove a second call did not take the snapshot again."""
    settings = stack.cassandra.settings_for(node)
    out = {}
    with host_for(stack, node) as host:
        for ks in ("thehive", "system_auth"):
            for snap in cass.find_table_snapshots(host, settings, tag, ks):
                listing = host.run(["find", snap.path, "-type", "f", "-printf", r"%P %s %T@\n"]).text
                out[snap.path] = listing
    return out


def test_nodetool_snapshot_twice_with_one_tag_leaves_one_snapshot_per_node(make_stack):
    _, stack = make_stack("local")
    nodes = [n.name for n in stack.nodes_with("cassandra")]
    tag = f"idem-{secrets.token_hex(4)}"
    tags_before = {n: _tags(stack, n) for n in nodes}
    try:
        first = {n: cass.snapshot_node(stack, n, tag, ["thehive"]) for n in nodes}
        before = {n: _folders(stack, n, tag) for n in nodes}
        second = {n: cass.snapshot_node(stack, n, tag, ["thehive"]) for n in nodes}
        assert second == first and all(first.values())
        assert {n: _folders(stack, n, tag) for n in nodes} == before

        # An attempt that snapshotted one keyspace and lost its answer before the next: the
        # retry keeps the first keyspace's snapshot and takes only the missing one.
        third = {n: cass.snapshot_node(stack, n, tag, ["thehive", "system_auth"]) for n in nodes}
        for n in nodes:
            assert [t for t in third[n] if t.keyspace == "thehive"] == first[n]
            assert any(t.keyspace == "system_auth" for t in third[n])
            after = _folders(stack, n, tag)
            assert {p: v for p, v in after.items() if p in before[n]} == before[n]
            with host_for(stack, n) as host:
                settings = stack.cassandra.settings_for(n)
                assert cass.take_snapshot_once(host, settings, tag, ["thehive", "system_auth"]) == []
            assert _tags(stack, n) - tags_before[n] == {tag}  # one snapshot, no other made
    finally:
        for n in nodes:
            cass.clear_node(stack, n, tag)
    assert {n: _tags(stack, n) for n in nodes} == tags_before


def _tags(stack, node: str) -> set[str]:
    with host_for(stack, node) as host:
        return cass.list_snapshots(host, stack.cassandra.settings_for(node))


@pytest.fixture
def es_stack(make_stack):
    _, stack = make_stack("local")
    settings = stack.elasticsearch
    es_mod.prepare(settings)  # the snapshot repository registered and verified
    names: list[str] = []
    yield settings, names
    with es_mod.es_session(settings) as es:
        for name in names:
            es_mod.delete_snapshot(es, settings.snapshot_repository.name, name)


def test_es_snapshot_twice_with_one_name_returns_the_same_snapshot(es_stack):
    settings, names = es_stack
    repo = settings.snapshot_repository.name
    names.append(name := f"idem-{secrets.token_hex(4)}")
    first = es_mod.snapshot(settings, name)
    second = es_mod.snapshot(settings, name)
    assert first["state"] == "SUCCESS" and first["shards"]["failed"] == 0
    assert second == first
    with es_mod.es_session(settings) as es:
        found = es.snapshot.get(repository=repo, snapshot=name)["snapshots"]
    assert [s["uuid"] for s in found] == [first["uuid"]]


def test_es_snapshot_create_repeated_while_running_waits_for_the_first(es_stack):
    settings, names = es_stack
    repo = settings.snapshot_repository.name
    names.append(name := f"idem-{secrets.token_hex(4)}")
    indices = es_mod.prepare(settings)
    with es_mod.es_session(settings) as es:
        assert es_mod.start_snapshot(es, repo, name, indices) is True
        assert es_mod.start_snapshot(es, repo, name, indices) is False  # running or done: ours
    record = es_mod.snapshot(settings, name)
    with es_mod.es_session(settings) as es:
        found = es.snapshot.get(repository=repo, snapshot=name)["snapshots"]
    assert record["state"] == "SUCCESS" and [s["uuid"] for s in found] == [record["uuid"]]
    assert sorted(record["indices"]) == sorted(indices)


def test_es_snapshot_by_that_name_not_ours_is_refused(es_stack):
    settings, names = es_stack
    repo = settings.snapshot_repository.name
    names.append(name := f"idem-{secrets.token_hex(4)}")
    indices = es_mod.prepare(settings)
    with es_mod.es_session(settings) as es:
        es.snapshot.create(repository=repo, snapshot=name, indices=",".join(indices),
                           include_global_state=False, wait_for_completion=True)
        uuid = es.snapshot.get(repository=repo, snapshot=name)["snapshots"][0]["uuid"]
    with pytest.raises(es_mod.ElasticsearchError, match="not taken by thehive-backup") as err:
        es_mod.snapshot(settings, name)
    assert not err.value.transient
    with es_mod.es_session(settings) as es:
        assert es.snapshot.get(repository=repo, snapshot=name)["snapshots"][0]["uuid"] == uuid
