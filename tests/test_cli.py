"""The shell command on the real stack: every subcommand that acts on a stack, in the human form
and with the JSON a script would read (cold backup and cold restore run the flows of
tests/test_cold.py; here only their refusals, which need no stopped stack)."""
from __future__ import annotations

import json

import pytest

from deployments.cli import main
from tasks.cassandra import drop_keyspace
from tests.stack import seed

pytestmark = pytest.mark.usefixtures("prefect_server", "seeded3", "standin3")


def cli(capsys, *argv: str):
    code = main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out) if "--json" in argv else out.out


def test_every_subcommand_from_the_shell_human_and_json(make_stack, cluster3, capsys):
    path, stack_model = make_stack("local")
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

    # The human forms of the same commands.
    shown_text = cli(capsys, "--stack", stack, "show", backup_id)
    assert f"backup_id: {backup_id}" in shown_text and f"objects: {made['objects']}" in shown_text
    assert "ok: True" in cli(capsys, "--stack", stack, "verify", backup_id)
    second = cli(capsys, "--stack", stack, "backup", "hot", "--components", "cassandra", "--no-digests")
    second_id = next(line.split(": ", 1)[1] for line in second.splitlines()
                     if line.startswith("backup_id: "))

    # prune: a dry run unless --yes; it names what it would delete and deletes nothing.
    would = cli(capsys, "--stack", stack, "--json", "prune", "--keep-last", "1")
    assert (would["dry_run"], would["would_delete"], would["deleted"]) == (True, [backup_id], [])
    assert "(dry run: nothing was deleted; add --yes to delete)" in cli(
        capsys, "--stack", stack, "prune", "--keep-last", "1")
    assert [r["id"] for r in cli(capsys, "--stack", stack, "--json", "list")] == [second_id, backup_id]

    # unlock: no lock is held between runs.
    assert cli(capsys, "--stack", stack, "--json", "unlock") == []
    assert cli(capsys, "--stack", stack, "unlock").strip() == "(none)"

    # restore --yes, beside the live keyspace: every row compared, the live one untouched.
    live = seed.cluster_fingerprint(cluster3, "thehive")
    done = cli(capsys, "--stack", stack, "--json", "restore", second_id, "--yes",
               "--components", "cassandra", "--keyspace", "thehive", "--target-keyspace", "cli_copy")
    try:
        assert done["outcome"] == "complete" and "cli_copy" in done["cassandra"]
        assert seed.cluster_fingerprint(cluster3, "cli_copy") == live
        assert seed.cluster_fingerprint(cluster3, "thehive") == live
    finally:
        drop_keyspace(stack_model, "cli_copy")

    # The cold commands' refusals: one line, exit 1, nothing stopped.
    assert main(["--stack", stack, "restore", "--cold"]) == 1
    assert "needs a cold backup's id" in capsys.readouterr().err
