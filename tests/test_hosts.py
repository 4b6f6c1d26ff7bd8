"""Remote execution through the real sshd: quoting, streaming, and host-key verification."""
from __future__ import annotations

import hashlib
import itertools
import os

import paramiko
import pytest

from config.model import SshSettings
from tasks.hosts import CommandFailed, HostKeyRejected, LocalHost, SshHost
from tests.stack.sshd import other_host_key_line, write_known_hosts


@pytest.fixture
def ssh(real_stack) -> SshSettings:
    s = real_stack.sshd
    return SshSettings(user="root", port=s.port, key_file=str(s.client_key), known_hosts=str(s.known_hosts))


@pytest.fixture(params=["openssh", "paramiko", "local"])
def host(request, real_stack, ssh):
    """Streams over the OpenSSH client (the default where ``ssh`` is installed) or paramiko."""
    if request.param == "local":
        yield LocalHost()
    else:
        settings = ssh.model_copy(update={"openssh_streams": request.param == "openssh"})
        with SshHost("n2", real_stack.layout.addr(2), settings) as h:
            yield h


HOSTILE = ["a b", "it's", '"q"', "$(touch /tmp/pwned)", "`id`", "; rm -rf /", "*", "\\n", ""]


def test_arguments_arrive_verbatim(host):
    out = host.run(["printf", "%s\\0", *HOSTILE]).stdout
    assert out.split(b"\0")[:-1] == [a.encode() for a in HOSTILE]
    assert not os.path.exists("/tmp/pwned")


def test_stream_from_and_to_large_payloads(host, tmp_path):
    payload = os.urandom(24 << 20)
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    with host.stream_from(["cat", str(src)]) as chunks:
        got = hashlib.sha256()
        for c in chunks:
            got.update(c)
    assert got.hexdigest() == hashlib.sha256(payload).hexdigest()
    dst = tmp_path / "dst.bin"
    host.stream_to(["sh", "-c", 'cat > "$1"', "sh", str(dst)],
                   (payload[i:i + (1 << 20)] for i in range(0, len(payload), 1 << 20)))
    assert dst.read_bytes() == payload
    # chunks of any size and kind go out whole, in order (sent a packet's worth at a time)
    cuts = [0, 1, 32704, 32705, 65409, 3 << 20, (3 << 20) + 7, len(payload)]
    pieces = [payload[a:b] for a, b in itertools.pairwise(cuts)]
    host.stream_to(["sh", "-c", 'cat > "$1"', "sh", str(dst)],
                   [b"", *(bytearray(p) if i % 2 else p for i, p in enumerate(pieces))])
    assert dst.read_bytes() == payload


def test_failure_carries_exit_code_and_stderr(host):
    with pytest.raises(CommandFailed) as err:
        host.run(["sh", "-c", "echo nope >&2; exit 7"])
    assert err.value.exit_code == 7 and "nope" in str(err.value)
    with pytest.raises(CommandFailed):
        with host.stream_from(["sh", "-c", "echo partial; exit 3"]) as chunks:
            list(chunks)


def test_unknown_host_key_is_refused(real_stack, ssh, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyRejected, match="not in known_hosts"):
        SshHost("n1", real_stack.layout.addr(1), ssh.model_copy(update={"known_hosts": str(empty)})).run(["true"])


def test_changed_host_key_is_refused(real_stack, ssh, tmp_path):
    wrong = write_known_hosts(tmp_path / "known_hosts", [real_stack.layout.addr(1)],
                              real_stack.sshd.port, other_host_key_line())
    with pytest.raises(HostKeyRejected, match="does not match") as refused:
        SshHost("n1", real_stack.layout.addr(1), ssh.model_copy(update={"known_hosts": str(wrong)})).run(["true"])
    known = paramiko.HostKeys(str(wrong)).lookup(f"[{real_stack.layout.addr(1)}]:{real_stack.sshd.port}")
    (known_key,) = known.values()
    real = paramiko.Transport((real_stack.layout.addr(1), real_stack.sshd.port))
    try:
        real.start_client(timeout=10)
        offered = real.get_remote_server_key()
    finally:
        real.close()
    message = str(refused.value)
    assert f"known {known_key.get_name()} {known_key.fingerprint}" in message
    assert f"offered {offered.get_name()} {offered.fingerprint}" in message
    assert f"ssh-keyscan -p {real_stack.sshd.port} {real_stack.layout.addr(1)}" in message


def test_unknown_host_allowed_only_when_configured(real_stack, ssh, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    lax = ssh.model_copy(update={"known_hosts": str(empty), "allow_unknown_hosts": True})
    assert SshHost("n1", real_stack.layout.addr(1), lax).run(["echo", "ok"]).text == "ok\n"


def test_ssh_negotiates_aes_gcm_with_openssh(real_stack, ssh):
    """Half the CPU per GB of paramiko's default (benchmarks/ssh_ciphers.py)."""
    from tasks.hosts import connect_ssh

    client = connect_ssh(real_stack.layout.addr(2), ssh)
    try:
        transport = client.get_transport()
        assert (transport.local_cipher, transport.remote_cipher) == ("aes128-gcm@openssh.com",) * 2
    finally:
        client.close()


def test_a_command_whose_connection_closes_under_it_is_unreachable_not_failed(real_stack, ssh):
    """Its outcome is unknown: a transient fault to retry, never an exit status a caller reads."""
    import threading

    from tasks.hosts import HostUnreachable

    with SshHost("n2", real_stack.layout.addr(2), ssh) as h:
        client = h.client  # connects
        threading.Timer(1.0, client.close).start()  # another thread finds the connection broken
        with pytest.raises(HostUnreachable):
            h.run(["sleep", "5"], check=False)


def test_a_connection_with_nodelay(real_stack, ssh):
    """No Nagle wait on each channel open (~40 ms per command without it)."""
    import socket

    from tasks.hosts import connect_ssh

    client = connect_ssh(real_stack.layout.addr(2), ssh)
    try:
        assert client.get_transport().sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        client.close()


def test_output_is_read_to_its_end_not_to_the_exit_status(real_stack, ssh, tmp_path):
    """sshd sends the exit status as soon as it reaps the command, possibly before output still
    in its pipe (OpenSSH's session_exit_message: "there could be some more data waiting in the
    pipe"). A listing read up to the exit status came back empty under load, and a restore's
    staging found every file "missing". Made certain here: the output comes after the exit."""
    with SshHost("n2", real_stack.layout.addr(2), ssh) as h:
        out = h.run(["sh", "-c", "(sleep 0.5; seq 1 2000) & exit 0"]).text
        assert out.split() == [str(i) for i in range(1, 2001)]
        dst = tmp_path / "x"
        got = h.stream_to(["sh", "-c", '(sleep 0.5; cat "$1") & cat > "$1"', "sh", str(dst)], [b"later"])
        assert got.stdout == b"later"


@pytest.mark.parametrize("openssh_streams", [True, False], ids=["openssh", "paramiko"])
def test_many_short_extractions_share_one_connection_under_load(real_stack, ssh, tmp_path, openssh_streams):
    """``tar -x`` stops reading at its end-of-archive blocks, before our EOF: sshd could free
    the channel first and then drop the whole shared connection for that EOF ("ieof packet
    referred to nonexistent channel"). Under CPU load that took a few hundred extractions."""
    import io
    import subprocess
    import tarfile
    from concurrent.futures import ThreadPoolExecutor

    from tasks.ssh_pool import shared_ssh

    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.PAX_FORMAT) as t:
        for j in range(8):
            m = tarfile.TarInfo(f"nb-{j}-big-Data.db")
            m.size = 100 + 1000 * j
            t.addfile(m, io.BytesIO(os.urandom(m.size)))
    blob = bio.getvalue()

    settings = ssh.model_copy(update={"openssh_streams": openssh_streams})

    def extract(i: int) -> None:
        folder = tmp_path / f"d{i}"
        folder.mkdir()
        with SshHost("n2", real_stack.layout.addr(2), settings) as h:
            h.stream_to(["tar", "-xf", "-", "-C", str(folder), "--no-same-owner"],
                        (blob[k:k + 4096] for k in range(0, len(blob), 4096)), timeout=60)

    hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(3)]  # the loop is sh's own
    try:
        with shared_ssh(), ThreadPoolExecutor(4) as pool:
            list(pool.map(extract, range(800)))
    finally:
        for p in hogs:
            p.kill()
            p.wait()
    assert all(len(list((tmp_path / f"d{i}").iterdir())) == 8 for i in range(800))


def test_a_command_that_stops_reading_early_still_gets_its_input_end(host):
    """stream_to and run(stdin=) read the rest of stdin after the command: the exit status is
    the command's own, and the connection stays usable."""
    payload = [b"x" * 65536] * 64
    assert host.stream_to(["head", "-c", "3"], payload).stdout == b"xxx"
    with pytest.raises(CommandFailed) as err:
        host.stream_to(["sh", "-c", "head -c 1 >/dev/null; exit 4"], payload)
    assert err.value.exit_code == 4
    assert host.run(["head", "-c", "2"], stdin=b"abc").stdout == b"ab"
    assert host.run(["echo", "still"]).stdout == b"still\n"


@pytest.mark.parametrize("openssh_streams", [True, False], ids=["openssh", "paramiko"])
def test_a_command_stuck_after_its_input_ended_times_out(real_stack, ssh, monkeypatch, openssh_streams):
    """A transient fault the step retries, not a run that waits forever."""
    from tasks import hosts
    from tasks.hosts import CommandTimeout

    monkeypatch.setattr(hosts, "FINISH_TIMEOUT", 1.0)
    with SshHost("n2", real_stack.layout.addr(2), ssh.model_copy(update={"openssh_streams": openssh_streams})) as h:
        with pytest.raises(CommandTimeout, match="after its input ended"):
            h.stream_to(["sh", "-c", "cat >/dev/null; sleep 30"], [b"x"])


@pytest.mark.parametrize("openssh_streams", [True, False], ids=["openssh", "paramiko"])
def test_a_silent_stream_times_out_but_a_slow_reader_does_not(real_stack, ssh, openssh_streams):
    """Silence from the node is a stuck command; the time we take over a chunk is not."""
    import time

    from tasks.hosts import CommandTimeout

    with SshHost("n2", real_stack.layout.addr(2), ssh.model_copy(update={"openssh_streams": openssh_streams})) as h:
        with pytest.raises(CommandTimeout, match="silent for 1"):
            with h.stream_from(["sh", "-c", "echo a; sleep 30"], timeout=1) as chunks:
                list(chunks)
        got = b""
        with h.stream_from(["printf", "%s", "a", "b"], timeout=1) as chunks:
            for chunk in chunks:
                time.sleep(2.5)
                got += chunk
        assert got == b"ab"


def test_openssh_streams_trust_the_key_paramiko_verified_and_end_with_the_host(real_stack, ssh):
    """One master connection per node, which verifies the host key paramiko verified (here the
    host is reached by another name in known_hosts terms: only that key is accepted), and which
    goes with its Host: no ssh process, no socket folder left."""
    import subprocess

    with SshHost("n2", real_stack.layout.addr(2), ssh) as h:
        with h.stream_from(["echo", "one"]) as chunks:
            assert b"".join(chunks) == b"one\n"
        streams = h._streams
        assert streams is not None and streams.folder.is_dir()
        known = (streams.folder / "known_hosts").read_text().split()
        key = h.client.get_transport().get_remote_server_key()
        assert known == ["thb-node", key.get_name(), key.get_base64()]
        assert h.stream_to(["cat"], [b"two"]).stdout == b"two"
        assert subprocess.run(streams.base + ["-O", "check", "--", h.address], capture_output=True).returncode == 0
    assert not streams.folder.exists()
    assert str(streams.folder) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_openssh_streams_refuse_another_host_key(real_stack, ssh, tmp_path):
    """A master whose node offers another key than the one pinned is refused: the streams then
    stay on paramiko (whose own check refused nothing here), with a warning."""
    from tasks import openssh

    with SshHost("n2", real_stack.layout.addr(2), ssh) as h:
        other = paramiko.Ed25519Key.from_private_key_file(str(real_stack.sshd.client_key))  # not a host key
        assert openssh.open_streams(h.address, ssh, other) is None


def test_a_secret_in_the_argv_never_goes_through_the_openssh_client(real_stack, ssh):
    """Its argv would show the remote command (and the secret) to ``ps``; paramiko carries it."""
    with SshHost("n2", real_stack.layout.addr(2), ssh) as h:
        with h.stream_from(["echo", "--password", "x"]) as chunks:
            assert b"".join(chunks) == b"--password x\n"
        assert h._streams is None


def test_commands_end_while_the_client_rekeys(real_stack, ssh):
    """paramiko's client-side rekey (every 512 MiB it sends or receives) raced commands ending:
    the server's close of a channel, arriving just after our KEXINIT, made paramiko's own thread
    wait for a key exchange only it could finish, and the connection died 30 s later
    (paramiko #822; an 8 GB incremental backup took 165 s instead of 25). Here the connection
    rekeys every 64 KiB while four threads run short commands on it."""
    from concurrent.futures import ThreadPoolExecutor

    with SshHost("n2", real_stack.layout.addr(2), ssh) as h:
        transport = h.client.get_transport()
        transport.packetizer.REKEY_BYTES = 64 << 10
        transport.clear_to_send_timeout = 5  # the deadlock, if any, fails in 5 s, not 30

        def commands(_: int) -> int:
            return sum(len(h.run(["head", "-c", "50000", "/dev/zero"], timeout=60).stdout) for _ in range(60))

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(commands, range(4))) == [60 * 50000] * 4
        assert transport.is_active()
