"""tasks/openssh.py without a node: the ssh command line, and the stream plumbing on local
processes (the same code carries the ssh client's bytes; tests/test_hosts.py runs it over sshd)."""
from __future__ import annotations

import paramiko
import pytest

from config.model import SshSettings
from tasks import openssh


@pytest.fixture
def settings(tmp_path) -> SshSettings:
    known = tmp_path / "known_hosts"
    known.write_text("")
    key = tmp_path / "id"
    key.write_text("")
    return SshSettings(user="backup", port=2222, key_file=str(key), known_hosts=str(known), connect_timeout=4.5)


def _option(argv: list[str], name: str) -> str:
    values = [argv[i + 1].split("=", 1)[1] for i, a in enumerate(argv[:-1])
              if a == "-o" and argv[i + 1].startswith(name + "=")]
    assert len(values) == 1, (name, values)
    return values[0]


def test_the_ssh_command_trusts_only_the_pinned_key_and_runs_one_remote_line(settings):
    host_key = paramiko.ECDSAKey.generate()
    streams = openssh.OpenSshStreams("127.0.9.1", settings, host_key)
    try:
        argv = streams.argv("tar -xf - -C '/a b'")
        assert argv[-3:] == ["--", "127.0.9.1", "tar -xf - -C '/a b'"]  # one argument: the remote line
        assert argv[:4] == ["ssh", "-F", "none", "-T"]
        assert _option(argv, "StrictHostKeyChecking") == "yes"
        assert _option(argv, "BatchMode") == "yes"
        assert _option(argv, "IdentityAgent") == "none"
        assert _option(argv, "HostKeyAlias") == openssh.ALIAS
        assert _option(argv, "HostKeyAlgorithms") == host_key.get_name()
        assert _option(argv, "GlobalKnownHostsFile") == "/dev/null"
        assert _option(argv, "ConnectTimeout") == "5"
        assert _option(argv, "ControlMaster") == "no"
        assert argv[argv.index("-i") + 1] == settings.key_file
        assert argv[argv.index("-l") + 1] == "backup" and argv[argv.index("-p") + 1] == "2222"
        pinned = (streams.folder / "known_hosts").read_text().split()
        assert pinned == [openssh.ALIAS, host_key.get_name(), host_key.get_base64()]
        assert _option(argv, "UserKnownHostsFile") == str(streams.folder / "known_hosts")
        assert (streams.folder.stat().st_mode & 0o777) == 0o700  # the master's socket lives here
    finally:
        streams.close()
    assert not streams.folder.exists()


def test_an_rsa_host_key_is_checked_with_sha2_signatures():
    assert openssh._host_key_algorithms(paramiko.RSAKey.generate(1024)) == "rsa-sha2-512,rsa-sha2-256"


def test_without_the_ssh_client_or_when_turned_off_streams_stay_on_paramiko(settings, monkeypatch):
    key = paramiko.ECDSAKey.generate()
    off = settings.model_copy(update={"openssh_streams": False})
    assert openssh.open_streams("127.0.9.1", off, key) is None
    monkeypatch.setenv("PATH", "/nonexistent")
    assert openssh.open_streams("127.0.9.1", settings, key) is None
