"""The privilege prefix of a non-root SSH user (README, "A non-root SSH user"): read from the stack
file or a node's own ssh settings, argv words only, and put before privileged commands only."""
from __future__ import annotations

import pytest

from config import StackConfigError, load_stack
from tasks.hosts import LocalHost, host_for
from tests.unit.test_config import problems_of, valid_stack, write


def test_prefix_from_the_stack_and_a_node_of_its_own(tmp_path):
    data = valid_stack(tmp_path)
    data["ssh"] |= {"user": "thbackup", "privilege_prefix": ["sudo", "-n"]}
    data["nodes"][1]["ssh"] = {**data["ssh"], "privilege_prefix": ["doas", "-n"]}
    stack = load_stack(write(tmp_path, data))
    with host_for(stack, "n1") as n1, host_for(stack, "n2") as n2:  # no connection until a command
        assert n1.privileged(["tar", "-cf", "-", "."]) == ["sudo", "-n", "tar", "-cf", "-", "."]
        assert n2.privileged(["mv", "a", "b"]) == ["doas", "-n", "mv", "a", "b"]
    assert LocalHost().privileged(["rm", "x"]) == ["rm", "x"]


def test_no_prefix_by_default(tmp_path):
    with host_for(load_stack(write(tmp_path, valid_stack(tmp_path))), "n1") as host:
        assert host.privileged(["tar"]) == ["tar"]


@pytest.mark.parametrize("prefix, expected", [
    (["sudo -n"], "'sudo -n' is not a plain command word"),
    (["sudo", "-n;id"], "'-n;id' is not a plain command word"),
    (["sudo", ""], "'' is not a plain command word"),
    (["-n"], "must start with a command"),
    ("sudo -n", "valid list"),
])
def test_bad_prefix_refused_at_load(tmp_path, prefix, expected):
    data = valid_stack(tmp_path)
    data["ssh"]["privilege_prefix"] = prefix
    (problem,) = problems_of(tmp_path, data)
    assert problem.startswith("ssh.privilege_prefix") and expected in problem, problem
    with pytest.raises(StackConfigError):
        load_stack(write(tmp_path, data))
