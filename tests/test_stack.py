"""The real stack itself: every component answers, through the same paths the flows use."""
from __future__ import annotations

import hashlib
import os

import pytest
from prefect import flow, task

from tasks import cassandra as cass
from tasks.hosts import host_for
from tasks.repositories.s3 import s3_client
from tests.stack import seed
from tests.stack.stack import SEED3


@pytest.mark.parametrize("which", ["cassandra3", "cassandra5"])
def test_cql_round_trip(real_stack, which):
    cluster = getattr(real_stack, which)
    session = cluster.session()
    try:
        session.execute("CREATE KEYSPACE IF NOT EXISTS smoke WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        session.execute("CREATE TABLE IF NOT EXISTS smoke.t (k int PRIMARY KEY, v text)")
        session.execute("INSERT INTO smoke.t (k, v) VALUES (1, %s)", [which])
        assert session.execute("SELECT v FROM smoke.t WHERE k = 1").one().v == which
        version = session.execute("SELECT release_version FROM system.local").one().release_version
        assert version.startswith("4.1" if which == "cassandra3" else "5.0")
        session.execute("DROP KEYSPACE smoke")
    finally:
        session.cluster.shutdown()


def test_nodetool_status_over_ssh_on_every_node(make_stack, cluster3):
    _, stack = make_stack()
    for node in stack.nodes_with("cassandra"):
        with host_for(stack, node) as host:
            assert host.address == node.address
            states = cass.node_states(host, stack.cassandra.settings_for(node.name))
        assert states == {a: "UN" for a in cluster3.addresses}


def test_elasticsearch_health(real_stack):
    es = real_stack.elasticsearch.client()
    assert es.cluster.health()["status"] in ("green", "yellow")


def test_s3_put_get(real_stack):
    client = real_stack.s3.client()
    client.create_bucket(Bucket="smoke")
    body = os.urandom(1 << 20)
    client.put_object(Bucket="smoke", Key="a/b", Body=body)
    assert client.get_object(Bucket="smoke", Key="a/b")["Body"].read() == body


def test_prefect_flow_calls_a_task_on_each_node_in_parallel(prefect_server, make_stack):
    path, stack = make_stack()

    @task(task_run_name="hostname {node}")
    def where(node: str) -> str:
        with host_for(stack, node) as host:
            return host.run(["sh", "-c", "echo $SSH_CONNECTION"]).text.split()[2]

    @flow
    def everywhere() -> dict[str, str]:
        futures = {n.name: where.submit(n.name) for n in stack.nodes}
        return {n: f.result() for n, f in futures.items()}

    # Each node answered on its own address: the server side of its SSH connection.
    assert everywhere() == {n.name: n.address for n in stack.nodes}


def test_seeder_data_counts_back(real_stack, seeded3, cluster3):
    session = cluster3.session()
    try:
        prints = seed.keyspace_fingerprint(session, "thehive")
    finally:
        session.cluster.shutdown()
    assert {t: n for t, (n, _) in prints.items()} == seeded3["rows"]
    assert sum(seeded3["rows"].values()) > 1000
    count, _ = seed.index_fingerprint(real_stack.elasticsearch.client())
    assert count == seeded3["docs"] > 0
    on_disk = seed.files_fingerprint(real_stack.files_dir)
    assert on_disk == seeded3["files"] and len(on_disk) == 12
    assert all(hashlib.sha256((real_stack.files_dir / p).read_bytes()).hexdigest() == h
               for p, h in on_disk.items())


def test_s3_client_from_stack_settings(make_stack):
    _, stack = make_stack("s3")
    client = s3_client(stack.repository)
    assert client.list_objects_v2(Bucket=stack.repository.bucket)["KeyCount"] == 0


def test_a_flow_given_no_stack_reads_the_prefect_variable(prefect_server, tmp_path, monkeypatch):
    """Production names its stack in a Prefect Variable: a path, or the stack file's text."""
    import yaml
    from prefect.variables import Variable

    from flows.common import STACK_ENV, STACK_VARIABLE, resolve_stack
    from tests.unit.test_config import valid_stack

    @flow
    def which_stack(stack: str = "") -> str:
        return resolve_stack(stack).name

    monkeypatch.delenv(STACK_ENV, raising=False)
    data = valid_stack(tmp_path)
    data["ssh"].update(key_file=str(tmp_path / "id_ed25519"), known_hosts=str(tmp_path / "known_hosts"))
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        Variable.set(STACK_VARIABLE, str(path), overwrite=True)
        assert which_stack() == "t"
        data["name"] = "held-by-the-variable"
        Variable.set(STACK_VARIABLE, yaml.safe_dump(data), overwrite=True)
        assert which_stack() == "held-by-the-variable"
    finally:
        Variable.unset(STACK_VARIABLE)
    with pytest.raises(Exception, match="no stack file named"):
        which_stack()


def test_changed_seed_data_is_put_back(real_stack, seeded3, cluster3):
    """The harness's reset between tests: a later row, another matching index and a lost
    attachment are all put back, so the next test sees the data as seeded."""
    session = cluster3.session()
    try:
        session.execute("INSERT INTO thehive.systemlog (key, column1, value) VALUES (0x01, 0x02, 0x03)")
    finally:
        session.cluster.shutdown()
    es = real_stack.elasticsearch.client()
    es.index(index="thehive_global9", id="extra", document={"key": "extra"}, refresh=True)
    (real_stack.files_dir / next(iter(seeded3["files"]))).unlink()

    redone = real_stack.put_back_seed(cluster3, real_stack.seeded3_state, **SEED3)
    assert redone == ["keyspace", "index", "files"]
    assert real_stack.seeded_state(cluster3) == real_stack.seeded3_state
    assert real_stack.put_back_seed(cluster3, real_stack.seeded3_state, **SEED3) == []
