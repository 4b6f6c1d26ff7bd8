"""Stack files: the examples load, and every kind of bad input gets an error naming file and field."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from config import StackConfigError, load_stack
from config.model import SecretNotFound

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"


@pytest.fixture
def base(tmp_path: Path) -> dict:
    return valid_stack(tmp_path)


def valid_stack(tmp_path: Path) -> dict:
    """A small valid stack file's data; its key files are written into ``tmp_path``."""
    (tmp_path / "id_ed25519").write_text("key")
    (tmp_path / "known_hosts").write_text("")
    return {
        "name": "t",
        "ssh": {"user": "root", "port": 2222, "key_file": "id_ed25519", "known_hosts": "known_hosts"},
        "nodes": [
            {"name": "n1", "address": "127.0.0.1", "roles": ["cassandra", "thehive", "files"]},
            {"name": "n2", "address": "127.0.0.2", "roles": ["cassandra"]},
        ],
        "services": [
            {"name": "cassandra", "nodes": ["n1", "n2"],
             "manager": {"kind": "command", "start": ["start"], "stop": ["stop"], "status": ["st"]}},
        ],
        "cassandra": {"keyspaces": ["thehive"], "username": "admin",
                      "password": {"env": "CASS_PW"}},
        "elasticsearch": {"url": "http://127.0.0.31:9200"},
        "attachments": {"kind": "folder", "node": "n1", "path": "/opt/files"},
        "repository": {"kind": "local", "path": "/backups"},
    }


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def problems_of(tmp_path: Path, data) -> list[str]:
    path = write(tmp_path, data)
    with pytest.raises(StackConfigError) as err:
        load_stack(path)
    message = str(err.value)
    assert all(line.startswith(f"{path}: ") for line in message.splitlines()), message
    return err.value.problems


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load(example: Path):
    stack = load_stack(example, check_files=False)
    assert stack.nodes_with("cassandra")


def test_valid_file_loads_and_resolves_relative_paths(tmp_path, base):
    stack = load_stack(write(tmp_path, base))
    assert stack.ssh.key_file == str(tmp_path / "id_ed25519")
    assert stack.contact_points() == ["127.0.0.1", "127.0.0.2"]
    assert stack.cassandra.settings_for("n2").nodetool == ["nodetool"]


def mutate(base: dict, path: str, value) -> dict:
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = data
    for p in parents:
        target = target[int(p)] if isinstance(target, list) else target[p]
    if value is DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return data


DELETE = object()

BAD = [
    ("unknown top-level key", "retension", {"keep_last": 3}, "retension: unknown key"),
    ("unknown nested key", "cassandra.keyspace", "thehive", "cassandra.keyspace: unknown key"),
    ("missing repository", "repository", DELETE, "repository: required field is missing"),
    ("invalid CQL identifier", "cassandra.keyspaces", ["thehive; DROP"], "cassandra.keyspaces[0]: 'thehive; DROP' is not a valid CQL identifier"),
    ("service on unknown node", "services.0.nodes", ["n1", "n9"], "services[0].nodes[1]: unknown node 'n9'"),
    ("unreadable key file", "ssh.key_file", "missing_key", "ssh.key_file: file"),
    ("literal password", "cassandra.password", "hunter2", "cassandra.password: write a reference"),
    ("secret with both sources", "cassandra.password", {"env": "A", "prefect_secret": "b"}, "cassandra.password: give exactly one"),
    ("username without password", "cassandra.password", DELETE, "cassandra: give both 'username' and 'password'"),
    ("bad port", "ssh.port", 70000, "ssh.port: Input should be less than or equal to 65535"),
    ("unknown role", "nodes.1.roles", ["cassandra", "kafka"], "nodes[1].roles[1]: Input should be"),
    ("unknown service manager", "services.0.manager", {"kind": "upstart", "unit": "x"}, "services[0].manager: Input tag 'upstart'"),
    ("command manager without stop", "services.0.manager", {"kind": "command", "start": ["a"], "status": ["b"]}, "services[0].manager.stop: required field is missing"),
    ("attachments on unknown node", "attachments.node", "n7", "attachments.node: unknown node 'n7'"),
    ("bad Elasticsearch URL", "elasticsearch.url", "localhost:9200", "elasticsearch.url: 'localhost:9200' is not an http(s) URL"),
    ("repository kind unknown", "repository", {"kind": "ftp", "path": "/x"}, "repository: Input tag 'ftp'"),
    ("node name invalid", "nodes.0.name", "bad name", "nodes[0].name: 'bad name' is not a valid name"),
    ("no roles", "nodes.1.roles", [], "nodes[1].roles: List should have at least 1 item"),
    ("replication without class", "cassandra.replication", {"dc1": 3}, "cassandra.replication: replication needs a 'class'"),
    ("replication class typo", "cassandra.replication", {"class": "NetworkTopologyStrateg", "dc1": 3}, "cassandra.replication: replication.class 'NetworkTopologyStrateg' is not one of"),
    ("replication factor not a number", "cassandra.replication", {"class": "NetworkTopologyStrategy", "dc1": "three"}, "cassandra.replication: replication.dc1: 'three' is not a replication factor"),
    ("SimpleStrategy with a datacenter", "cassandra.replication", {"class": "SimpleStrategy", "dc1": 3}, "cassandra.replication: replication: SimpleStrategy takes only 'replication_factor'"),
    ("replication without factor", "cassandra.replication", {"class": "NetworkTopologyStrategy"}, "cassandra.replication: replication: NetworkTopologyStrategy needs a replication factor"),
    ("address that is an option", "nodes.0.address", "-oProxyCommand=touch /tmp/x", "nodes[0].address: '-oProxyCommand=touch /tmp/x' is neither an IP address nor a host name"),
    ("address with a space", "nodes.1.address", "10.0.0.1 x", "nodes[1].address: '10.0.0.1 x' is neither"),
    ("address label ending in -", "nodes.1.address", "cass-.example.org", "nodes[1].address: 'cass-.example.org' is neither"),
    ("contact point that is an option", "cassandra.contact_points", ["--nodes"], "cassandra.contact_points[0]: '--nodes' is neither"),
    ("SFTP host that is an option", "repository", {"kind": "sftp", "host": "-p", "path": "/b", "ssh": {"user": "u", "key_file": "id_ed25519", "known_hosts": "known_hosts"}}, "repository.host: '-p' is neither"),
    ("two nodes at one address", "nodes.1.address", "127.0.0.1", "nodes[1].address: '127.0.0.1' is already the address of node 'n1'"),
]


@pytest.mark.parametrize("what,path,value,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_field_is_named(tmp_path, base, what, path, value, expected):
    problems = problems_of(tmp_path, mutate(base, path, value))
    assert any(p.startswith(expected) for p in problems), problems


def test_duplicate_node_and_missing_ssh_reported_together(tmp_path, base):
    data = mutate(base, "ssh", DELETE)
    data["nodes"].append({"name": "n1", "address": "127.0.0.3", "roles": ["cassandra"]})
    problems = problems_of(tmp_path, data)
    assert "nodes[2].name: duplicate node name 'n1'" in problems
    assert any(p.startswith("nodes[0].ssh: node 'n1' uses transport ssh") for p in problems)


@pytest.mark.parametrize("address", ["10.0.0.7", "::1", "cass1", "cass-1.example.org", "CASS1.example.org."])
def test_ip_addresses_and_host_names_are_accepted(tmp_path, base, address):
    assert load_stack(write(tmp_path, mutate(base, "nodes.1.address", address))).nodes[1].address


def test_not_yaml(tmp_path):
    problems = problems_of(tmp_path, "name: [unclosed\nnodes: {")
    assert problems[0].startswith("line ") and "not valid YAML" in problems[0]


def test_not_a_mapping(tmp_path):
    assert problems_of(tmp_path, "- a\n- b\n") == ["the file must hold a mapping (key: value) at the top"]


def test_missing_file_names_it(tmp_path):
    with pytest.raises(StackConfigError, match=r"nope\.yaml: file not found"):
        load_stack(tmp_path / "nope.yaml")


def test_secret_resolves_from_environment_and_hides_value(tmp_path, base, monkeypatch):
    stack = load_stack(write(tmp_path, base))
    with pytest.raises(SecretNotFound, match="CASS_PW"):
        stack.cassandra.password.resolve()
    monkeypatch.setenv("CASS_PW", "s3cr3t-value")
    secret = stack.cassandra.password.resolve()
    assert secret.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(secret) + str(secret) + repr(stack)
    assert os.environ["CASS_PW"] not in stack.model_dump_json()


def test_s3_server_side_encryption_settings(tmp_path, base):
    base["repository"] = {"kind": "s3", "bucket": "b", "server_side_encryption": "aws:kms",
                          "sse_kms_key_id": "alias/thehive"}
    repo = load_stack(write(tmp_path, base)).repository
    assert repo.write_args() == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/thehive"}
    base["repository"] = {"kind": "s3", "bucket": "b", "sse_kms_key_id": "k"}
    assert problems_of(tmp_path, base) == ["repository: sse_kms_key_id needs server_side_encryption: aws:kms"]


@pytest.mark.parametrize("check, value", [
    ("cql_identifier", "thehive\n"), ("host_address", "node1\n"), ("host_address", "10.0.0.1\n")])
def test_a_final_newline_is_refused_not_matched_by_dollar(check, value):
    """``^…$`` lets a final newline through; every validating pattern ends with ``\\Z``."""
    import config.model as model

    with pytest.raises(ValueError):
        getattr(model, check)(value)


def test_stream_counts_default_and_bounds(tmp_path):
    base = valid_stack(tmp_path)
    stack = load_stack(write(tmp_path, base))
    assert (stack.cassandra.streams_per_node, stack.cassandra.max_streams) == (2, None)
    for field, bad in (("streams_per_node", 0), ("max_streams", 0), ("max_streams", "many")):
        data = valid_stack(tmp_path)
        data["cassandra"][field] = bad
        assert any(f"cassandra.{field}" in p for p in problems_of(tmp_path, data)), (field, bad)
