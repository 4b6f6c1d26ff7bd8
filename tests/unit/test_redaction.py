"""Secrets never reach an error message: the sstableloader's one-off password is redacted."""
from tasks.hosts import CommandFailed, LocalHost, printable, redacted


def test_password_values_are_redacted_in_every_form():
    argv = ["sstableloader", "--username", "loader", "--password", "s3cr3t", "-pw", "other",
            "--password=inline", "/staging/ks/t"]
    shown = printable(argv)
    for secret in ("s3cr3t", "other", "inline"):
        assert secret not in shown
    assert redacted(argv)[:4] == ["sstableloader", "--username", "loader", "--password"]
    assert shown.endswith("/staging/ks/t")


def test_a_failed_command_carries_no_password():
    try:
        LocalHost().run(["sh", "-c", "exit 3", "--password", "s3cr3t"])
    except CommandFailed as exc:
        assert "s3cr3t" not in str(exc) and "s3cr3t" not in exc.argv
        assert exc.exit_code == 3
    else:
        raise AssertionError("the command should have failed")
