"""The shell command on the real stack: a hot backup, then list, show, verify and a restore dry
run through ``thehive-backup``, with the JSON a script would read."""
from __future__ import annotations

import json

import pytest

from deployments.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server", "seeded3", "standin3")


def cli(capsys, *argv: str):
    code = main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out) if "--json" in argv else out.out


def test_backup_list_show_verify_and_restore_dry_run_from_the_shell(make_stack, capsys):
    path, _ = make_stack("local")
    stack = str(path)
    made = cli(capsys, "--stack", stack, "--json", "backup", "hot", "--components", "cassandra", "--no-digests")
    backup_id = made["backup_id"]

    rows = cli(capsys, "--stack", stack, "list", "--json")
    assert [(r["id"], r["status"]) for r in rows] == [(backup_id, "complete")]
    table = cli(capsys, "--stack", stack, "list")
    assert table.splitlines()[0].split()[:3] == ["ID", "KIND", "STATUS"] and backup_id in table

    shown = cli(capsys, "--stack", stack, "show", backup_id, "--json")
    assert shown["backup_id"] == backup_id and shown["components"] == ["cassandra"]
    assert len(shown["objects"]) == made["objects"] > 0

    verified = cli(capsys, "--stack", stack, "verify", backup_id, "--json")
    assert (verified["backup_id"], verified["objects"], verified["ok"]) == (backup_id, made["objects"], True)

    plan = cli(capsys, "--stack", stack, "restore", backup_id, "--components", "cassandra")
    assert plan.rstrip().endswith("(dry run: everything was checked and nothing changed; add --yes to restore)")

    assert main(["--stack", stack, "show", "hot-20000101-000000-dead"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("thehive-backup: show failed: ") and err.count("\n") == 1
