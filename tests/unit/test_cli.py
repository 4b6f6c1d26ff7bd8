"""The shell command's contract: usage mistakes exit 2, failures exit 1 with one line, no traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from deployments.cli import _table, main, parser


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployments.cli", *argv], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


def test_a_missing_stack_file_is_one_line_and_exit_1(tmp_path):
    r = run("--stack", str(tmp_path / "nope.yaml"), "list")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"thehive-backup: list failed: {tmp_path}/nope.yaml: file not found"]


def test_no_stack_anywhere_says_how_to_name_one():
    r = run("verify")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().endswith("or set the Prefect Variable 'thehive-backup-stack' to a path or to the "
                                     "stack file's text")


def test_usage_mistakes_exit_2():
    assert run("restore", "--bogus").returncode == 2
    assert run("backup", "warm").returncode == 2


def test_options_are_accepted_before_and_after_the_command():
    a = parser().parse_args(["--json", "--stack", "s.yaml", "list"])
    b = parser().parse_args(["list", "--json", "--stack", "s.yaml"])
    assert (a.json, a.stack) == (b.json, b.stack) == (True, "s.yaml")


def test_destructive_commands_are_dry_runs_unless_yes():
    args = parser().parse_args(["restore"])
    assert args.backup_id == "latest" and args.yes is False
    assert parser().parse_args(["prune", "--keep-last", "3"]).yes is False
    rn = parser().parse_args(["rebuild-node", "n2"])
    assert (rn.node, rn.backup_id, rn.yes, rn.repair) == ("n2", "latest", False, False)


def test_rebuild_node_usage():
    assert run("rebuild-node").returncode == 2  # the node is required
    args = parser().parse_args(["rebuild-node", "n2", "hot-20261128-010203-abcd", "--yes", "--repair"])
    assert (args.backup_id, args.yes, args.repair) == ("hot-20261128-010203-abcd", True, True)


def test_cold_restore_without_yes_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    from tests.unit.test_config import valid_stack, write

    path = write(tmp_path, valid_stack(tmp_path))
    assert main(["--stack", str(path), "restore", "--cold"]) == 1
    assert capsys.readouterr().err == ("thehive-backup: restore --cold needs a cold backup's id "
                                       "(see 'thehive-backup list')\n")
    assert main(["--stack", str(path), "restore", "cold-20261128-010203-abcd", "--cold"]) == 1
    assert capsys.readouterr().err == ("thehive-backup: restore --cold changes the stack's folders: "
                                       "add --yes to go ahead\n")


def test_table_aligns_columns():
    text = _table([{"id": "hot-1", "size_mib": 1.5}, {"id": "cold-22", "size_mib": 10}], ("id", "size_mib"))
    assert text.splitlines() == ["ID       SIZE_MIB", "hot-1    1.5", "cold-22  10"]
    assert _table([], ("id",)) == "(none)"


@pytest.mark.parametrize("command", ["backup hot", "restore", "list", "show X", "verify", "drill", "prune",
                                     "unlock", "sandbox up", "rebuild-node n2"])
def test_every_command_has_help(command):
    with pytest.raises(SystemExit) as done:
        parser().parse_args([*command.split(), "--help"])
    assert done.value.code == 0
