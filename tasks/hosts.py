"""Run commands and move bytes on a node, locally or over SSH, through one small interface.

Commands are argv lists: for SSH they are joined with ``shlex.join`` so every argument is quoted
for the remote shell; locally they never touch a shell. Host keys are verified against the
configured known_hosts file and unknown hosts are refused unless the stack explicitly allows them.
A Host is used by one thread at a time: open one per task. Inside ``shared_ssh()`` (a whole
backup run) the Hosts of one node share one SSH connection, whatever thread they run on.

An SSH Host's streams (``stream_from``, ``stream_to``: the bytes of backups and restores) go
through the OpenSSH client where it is installed, at less than half paramiko's CPU per byte
(tasks/openssh.py); its commands, and the host-key check, are paramiko's.

Commands that touch service data go through ``Host.privileged`` (the stack's privilege prefix,
e.g. ``sudo -n``, for a non-root SSH user); nothing else is prefixed.

About 400 lines on purpose: the interface, its two implementations and the SSH connection details
(host-key policy, cipher order, redaction) are read together when checking what reaches a node.
"""
from __future__ import annotations

import logging
import shlex
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import paramiko

from config.model import Node, SshSettings, Stack
from tasks import local_streams, openssh, ssh_pool

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


class HostError(Exception):
    """Base of errors raised by a Host; ``transient`` says whether a retry may help."""

    transient = False


class HostUnreachable(HostError):
    """The connection failed or broke: worth a retry."""

    transient = True


#: Options whose next argument is a secret (sstableloader's one-off role password).
SECRET_OPTIONS = ("--password", "-pw")
REDACTED = "***"


def redacted(argv: Sequence[str]) -> list[str]:
    """The argv with every secret value replaced: what messages, logs and errors may carry."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append(REDACTED)
            hide_next = False
        elif arg in SECRET_OPTIONS:
            shown.append(arg)
            hide_next = True
        elif arg.startswith(tuple(f"{o}=" for o in SECRET_OPTIONS)):
            shown.append(arg.split("=", 1)[0] + "=" + REDACTED)
        else:
            shown.append(arg)
    return shown


def printable(argv: Sequence[str]) -> str:
    """The command as a shell line for messages and logs, secrets replaced."""
    return shlex.join(redacted(argv))


class HostKeyRejected(HostError):
    """The host's key is unknown or does not match known_hosts: never retried."""


class AuthenticationFailed(HostError):
    """The SSH credentials were refused: never retried."""


class CommandTimeout(HostError):
    transient = True


class CommandFailed(HostError):
    def __init__(self, host: str, argv: Sequence[str], exit_code: int, stderr: bytes):
        self.host, self.argv, self.exit_code = host, redacted(argv), exit_code
        self.stderr = stderr.decode(errors="replace").strip()
        tail = self.stderr[-2000:]
        super().__init__(f"{host}: `{printable(self.argv)}` exited with {exit_code}: {tail}")


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


class Host(ABC):
    """A node we can run commands on. Use as a context manager so connections are closed."""

    name: str
    #: Words put before privileged commands (``ssh.privilege_prefix``, e.g. ``sudo -n``).
    privilege_prefix: tuple[str, ...] = ()

    def privileged(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as it must run to touch what the SSH user may not: service data folders,
        staging, chown, service managers (README, "Least privilege"). Apply it at the call
        site of exactly those commands; the rest run as the SSH user."""
        return [*self.privilege_prefix, *argv]

    @abstractmethod
    def run(self, argv: Sequence[str], *, timeout: float = 300, stdin: bytes | None = None,
            check: bool = True) -> CommandResult:
        """Run a command to completion and capture its output."""

    @abstractmethod
    @contextmanager
    def stream_from(self, argv: Sequence[str], *, timeout: float = 300) -> Iterator[Iterator[bytes]]:
        """Yield the command's stdout as chunks.

        The chunk iterator raises CommandFailed at its end if the command failed, so a consumer
        (an atomic repository write) never completes on the output of a failed command.
        ``timeout`` is the longest silence tolerated, not the total duration.
        """

    @abstractmethod
    def stream_to(self, argv: Sequence[str], chunks: Iterable[bytes], *,
                  timeout: float = 300) -> CommandResult:
        """Feed ``chunks`` to the command's stdin, then wait for it to exit successfully."""

    def close(self) -> None:  # noqa: B027 - optional: hosts that hold nothing need not close
        pass

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, argv: Sequence[str], result: CommandResult, check: bool) -> CommandResult:
        if check and result.exit_code != 0:
            raise CommandFailed(self.name, argv, result.exit_code, result.stderr)
        return result


class LocalHost(Host):
    """The machine the flow runs on; no shell involved."""

    def __init__(self, name: str = "localhost"):
        self.name = name

    def run(self, argv, *, timeout=300, stdin=None, check=True):
        try:
            p = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeout(f"{self.name}: `{printable(argv)}` timed out after {timeout}s") from exc
        except FileNotFoundError as exc:
            raise CommandFailed(self.name, argv, 127, str(exc).encode()) from exc
        return self._check(argv, CommandResult(p.returncode, p.stdout, p.stderr), check)

    @contextmanager
    def stream_from(self, argv, *, timeout=300):
        with local_streams.stream_from(argv, timeout) as chunks:
            yield _mapped(self.name, argv, chunks)

    def stream_to(self, argv, chunks, *, timeout=300):
        with _stream_errors(self.name, argv):
            out, err = local_streams.stream_to(argv, chunks, timeout, timeout)
        return CommandResult(0, out, err)


@contextmanager
def _stream_errors(name: str, argv: Sequence[str], *, ssh_client: bool = False) -> Iterator[None]:
    """A local process's stream outcomes as a Host's. From the ssh client (``ssh_client``),
    exit status 255 is its own: the connection failed, a transient fault."""
    try:
        yield
    except local_streams.StreamStalled as exc:
        raise CommandTimeout(f"{name}: `{printable(argv)}` {exc}") from None
    except local_streams.StreamFailed as exc:
        if ssh_client and exc.exit_code == 255:
            raise HostUnreachable(f"{name}: `{printable(argv)}`: "
                                  f"{exc.stderr.decode(errors='replace').strip()[-2000:]}") from None
        raise CommandFailed(name, argv, exc.exit_code, exc.stderr) from None
    except FileNotFoundError as exc:
        raise CommandFailed(name, argv, 127, str(exc).encode()) from exc


def _mapped(name: str, argv: Sequence[str], chunks: Iterator[bytes], *, ssh_client: bool = False) -> Iterator[bytes]:
    with _stream_errors(name, argv, ssh_client=ssh_client):
        yield from chunks


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key):
        raise HostKeyRejected(
            f"{hostname}: host key {key.get_name()} {key.fingerprint} is not in known_hosts; "
            "add it after checking its fingerprint (ssh-keyscan), or set allow_unknown_hosts"
        )


def changed_key_message(address: str, settings: SshSettings, known, offered) -> str:
    """Both fingerprints and how to look, so that an operator can tell a rebuilt host from an
    attack without reading code."""
    target = address if settings.port == 22 else f"[{address}]:{settings.port}"
    return (f"{address}: host key does not match known_hosts ({settings.known_hosts}): known "
            f"{known.get_name()} {known.fingerprint}, offered {offered.get_name()} {offered.fingerprint}. "
            f"Inspect it with: ssh-keyscan -p {settings.port} {address} | ssh-keygen -lf - ; if the "
            f"change is expected, replace the entry: ssh-keygen -R '{target}' -f {settings.known_hosts}")


class _NodeTransport(paramiko.Transport):
    """paramiko's transport with two changes.

    - AES-GCM offered first: about half the CPU per GB of paramiko's default aes128-ctr +
      hmac-sha2-256 (benchmarks/ssh_ciphers.py); every other cipher stays as a fallback.
    - Its own thread never waits for a key exchange. paramiko rekeys every 512 MiB sent or
      received; when the server closed a channel just after our KEXINIT left, paramiko's thread
      waited to send its reply until the exchange that only it could carry on was done, and
      the connection died 30 s later (paramiko #822; an 8 GB backup's streams share one
      connection). Such a message now waits in a list, sent as soon as the new keys are in
      (RFC 4253 7.1: nothing but the exchange's messages in between).
    """

    _preferred_ciphers = (
        *(c for c in paramiko.Transport._preferred_ciphers if c.endswith("-gcm@openssh.com")),
        *(c for c in paramiko.Transport._preferred_ciphers if not c.endswith("-gcm@openssh.com")),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[paramiko.Message] = []

    def _send_user_message(self, data) -> None:
        if threading.current_thread() is self and not self.clear_to_send.is_set():
            self._held.append(data)  # only this thread finishes the exchange: never wait here
            return
        super()._send_user_message(data)

    def _parse_newkeys(self, m) -> None:
        super()._parse_newkeys(m)
        with self.clear_to_send_lock:
            held, self._held = self._held, []
            for data in held:
                self._send_message(data)


def connect_ssh(address: str, settings: SshSettings) -> paramiko.SSHClient:
    """Open a verified SSH connection; map paramiko's errors onto transient/permanent ones."""
    client = paramiko.SSHClient()
    client.load_host_keys(settings.known_hosts)
    client.set_missing_host_key_policy(
        paramiko.WarningPolicy() if settings.allow_unknown_hosts else _RejectUnknown()
    )
    try:
        client.connect(
            address, port=settings.port, username=settings.user, key_filename=settings.key_file,
            timeout=settings.connect_timeout, banner_timeout=settings.connect_timeout,
            auth_timeout=settings.connect_timeout, allow_agent=False,
            look_for_keys=settings.key_file is None, transport_factory=_NodeTransport,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyRejected(changed_key_message(address, settings, exc.expected_key, exc.key)) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise AuthenticationFailed(f"{address}: SSH authentication failed for {settings.user}: {exc}") from None
    except HostKeyRejected:
        client.close()
        raise
    except (OSError, paramiko.SSHException, EOFError) as exc:
        client.close()
        raise HostUnreachable(f"{address}:{settings.port}: {exc}") from exc
    transport = client.get_transport()
    transport.set_keepalive(30)
    if isinstance(transport.sock, socket.socket):
        # Without it, Nagle holds each new channel's open request until the server acknowledges
        # the last channel's close (a delayed ACK): ~40 ms per command, 3 ms with it.
        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


class SshHost(Host):
    """A node reached over SSH; the connection opens on first use (or is borrowed from the
    run's shared ones, ``shared_ssh``)."""

    def __init__(self, name: str, address: str, settings: SshSettings):
        self.name, self.address, self.settings = name, address, settings
        self.privilege_prefix = tuple(settings.privilege_prefix)
        self._client: paramiko.SSHClient | None = None
        self._pool: ssh_pool.SshPool | None = None
        self._streams: openssh.OpenSshStreams | None = None  # our own, outside a pool
        self._streams_tried = False

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            pool = ssh_pool.current()
            if pool is not None:
                self._client, self._pool = pool.lease(self.address, self.settings, connect_ssh), pool
            else:
                self._client = connect_ssh(self.address, self.settings)
        return self._client

    def close(self, broken: bool = False) -> None:
        if self._streams is not None:
            self._streams.close()
        self._streams, self._streams_tried = None, False
        if self._client is not None:
            if self._pool is not None:
                self._pool.release(self._client, broken)
            else:
                self._client.close()
            self._client = self._pool = None

    def _open(self, argv: Sequence[str], timeout: float, *, stdin: bool = False) -> paramiko.Channel:
        """A channel running ``argv`` (``_command``)."""
        command = _command(argv, stdin)
        try:
            channel = self.client.get_transport().open_session(timeout=self.settings.connect_timeout)
            channel.settimeout(timeout)
            channel.exec_command(command)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.close(broken=True)
            raise HostUnreachable(f"{self.name}: cannot start `{command}`: {exc}") from exc
        return channel

    def run(self, argv, *, timeout=300, stdin=None, check=True):
        channel = self._open(argv, timeout, stdin=stdin is not None)
        deadline = time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        try:
            if stdin is not None:
                _send_all(channel, stdin)
                _end_input(channel)
            _drain(channel, out, err, deadline, f"{self.name}: `{printable(argv)}` timed out after {timeout}s")
            code = _exit_status(self.name, argv, channel)
        except TimeoutError as exc:
            raise CommandTimeout(f"{self.name}: `{printable(argv)}` silent for {timeout}s") from exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise HostUnreachable(f"{self.name}: `{printable(argv)}`: {exc}") from exc
        finally:
            _close(channel)
        return self._check(argv, CommandResult(code, bytes(out), bytes(err)), check)

    @contextmanager
    def _openssh(self, argv: Sequence[str]) -> Iterator[openssh.OpenSshStreams | None]:
        """A session of the node's OpenSSH streams for one stream of ``argv``, or None: paramiko
        carries it (no ``ssh``, ``openssh_streams`` off, a secret in the argv, every session busy)."""
        streams = None
        if self.settings.openssh_streams and redacted(argv) == list(argv):
            host_key = self.client.get_transport().get_remote_server_key()  # paramiko verified it
            if self._pool is not None:
                streams = self._pool.streams(self.address, self.settings, host_key)
            else:
                if not self._streams_tried:
                    self._streams_tried = True
                    self._streams = openssh.open_streams(self.address, self.settings, host_key)
                streams = self._streams
        if streams is None or not streams.sessions.acquire(blocking=False):
            yield None
            return
        try:
            yield streams
        finally:
            streams.sessions.release()

    @contextmanager
    def stream_from(self, argv, *, timeout=300):
        with self._openssh(argv) as streams:
            if streams is None:
                with self._channel_stream_from(argv, timeout) as chunks:
                    yield chunks
            else:
                with local_streams.stream_from(streams.argv(_command(argv, stdin=False)), timeout) as chunks:
                    yield _mapped(self.name, argv, chunks, ssh_client=True)

    @contextmanager
    def _channel_stream_from(self, argv: Sequence[str], timeout: float) -> Iterator[Iterator[bytes]]:
        channel = self._open(argv, timeout)  # stdin: /dev/null
        err = bytearray()

        def chunks() -> Iterator[bytes]:
            try:
                while True:
                    while channel.recv_stderr_ready():
                        err.extend(channel.recv_stderr(65536))
                    data = channel.recv(CHUNK)
                    if not data:
                        break
                    yield data
                while not channel.exit_status_ready():
                    _pump(channel, bytearray(), err)
                while channel.recv_stderr_ready():
                    err.extend(channel.recv_stderr(65536))
            except TimeoutError as exc:
                raise CommandTimeout(f"{self.name}: `{printable(argv)}` silent for {timeout}s") from exc
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise HostUnreachable(f"{self.name}: `{printable(argv)}`: {exc}") from exc
            code = _exit_status(self.name, argv, channel)
            if code != 0:
                raise CommandFailed(self.name, argv, code, bytes(err))

        try:
            yield chunks()
        finally:
            _close(channel)

    def stream_to(self, argv, chunks, *, timeout=300):
        with self._openssh(argv) as streams:
            if streams is None:
                return self._channel_stream_to(argv, chunks, timeout)
            with _stream_errors(self.name, argv, ssh_client=True):
                out, err = local_streams.stream_to(streams.argv(_command(argv, stdin=True)), chunks, timeout,
                                                   min(timeout, FINISH_TIMEOUT))
            return CommandResult(0, out, err)

    def _channel_stream_to(self, argv: Sequence[str], chunks: Iterable[bytes], timeout: float) -> CommandResult:
        channel = self._open(argv, timeout, stdin=True)
        out, err = bytearray(), bytearray()
        try:
            for chunk in chunks:
                _send_all(channel, chunk)
                while channel.recv_stderr_ready() or channel.recv_ready():
                    _pump(channel, out, err)
            _end_input(channel)
            finish = min(timeout, FINISH_TIMEOUT)
            _drain(channel, out, err, time.monotonic() + finish,
                   f"{self.name}: `{printable(argv)}` not done {finish:.0f}s after its input ended")
            code = _exit_status(self.name, argv, channel)
        except TimeoutError as exc:
            raise CommandTimeout(f"{self.name}: `{printable(argv)}` silent for {timeout}s") from exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise HostUnreachable(f"{self.name}: `{printable(argv)}`: {exc}") from exc
        finally:
            _close(channel)
        return self._check(argv, CommandResult(code, bytes(out), bytes(err)), True)


def _command(argv: Sequence[str], stdin: bool) -> str:
    """The remote shell line running ``argv``. Without ``stdin`` the command reads /dev/null (a
    redirect for the remote shell): we then never send EOF on it, since an EOF that reaches sshd
    after it has freed the channel of a command that already ended ("ieof packet referred to
    nonexistent channel") makes it drop the whole connection, with every command on it. With
    ``stdin`` the command runs inside READ_TO_EOF, for the same reason."""
    if stdin:
        return shlex.join(["sh", "-c", READ_TO_EOF, "sh", *argv])
    return shlex.join(argv) + " </dev/null"


#: What a command fed on stdin runs inside (``SshHost._open``): the rest of stdin is read after the command ends,
#: so that the command ends only after our EOF has reached sshd. ``tar -x`` stops at its
#: end-of-archive blocks; sshd then freed the channel, and the EOF that came next for it ("ieof
#: packet referred to nonexistent channel") made sshd drop the whole shared connection.
READ_TO_EOF = '"$@"; rc=$?; cat >/dev/null; exit $rc'


#: What paramiko sends per call: a packet's worth (OpenSSH's 32 KiB less the 64 it keeps for headers).
SEND_PIECE = 32 * 1024 - 64


def _send_all(channel: paramiko.Channel, data: bytes) -> None:
    """``Channel.sendall`` a packet's worth at a time. paramiko sends one packet per call and
    copies the rest of what it was given each time: a 1 MiB chunk given whole was copied 16 times
    over (2.2 CPU-s per GB sent against 1.4; benchmarks/ssh_send.py). A chunk of two packets or
    less costs less given whole."""
    if len(data) <= 2 * SEND_PIECE:
        channel.sendall(data)
        return
    view = memoryview(data)
    for i in range(0, len(view), SEND_PIECE):
        channel.sendall(bytes(view[i:i + SEND_PIECE]))


def _end_input(channel: paramiko.Channel) -> None:
    """EOF on the command's stdin, unless the command has ended already (it reads its stdin to
    the end, READ_TO_EOF: it can only have ended if its shell failed)."""
    if not (channel.closed or channel.exit_status_ready()):
        channel.shutdown_write()


def _close(channel: paramiko.Channel) -> None:
    """Close a channel whose connection may be gone: the error that ended the command, not a
    second one from the close, is what the caller must see (a transient fault is retried)."""
    try:
        channel.close()
    except (OSError, paramiko.SSHException, EOFError):
        pass


def _exit_status(name: str, argv: Sequence[str], channel: paramiko.Channel) -> int:
    """The command's exit status. None came when the session or the connection ended before the
    command did (a connection another thread found broken and closed, the server's end): what
    the command did is then unknown, a transient fault to retry, never its failure."""
    code = channel.recv_exit_status()
    if code == -1:
        raise HostUnreachable(f"{name}: `{printable(argv)}`: the session ended without an exit status")
    return code


#: How long a command fed by ``stream_to`` may take to end once its input has (an extraction
#: finishing its last file, a rename): longer is a stuck session, a transient fault retried
#: rather than a run that waits forever (the node rebuild once did, for 14 minutes).
FINISH_TIMEOUT = 300.0

#: How long output may still trail a command's exit status before we stop waiting for its EOF
#: (only a command that leaves a background process holding its stdout gets there).
EOF_GRACE = 10.0


def _drain(channel: paramiko.Channel, out: bytearray, err: bytearray, deadline: float,
           timed_out: str) -> None:
    """Read the command's output up to the channel's EOF. Never stop at the exit status alone:
    sshd sends it when the process ends, possibly before the output still in its pipe (a fast
    ``find`` then looked empty). Past ``deadline``: CommandTimeout(``timed_out``); EOF_GRACE
    bounds the wait for an EOF that trails the exit status."""
    exited_at = None
    while not ((channel.eof_received or channel.closed)
               and not channel.recv_ready() and not channel.recv_stderr_ready()):
        now = time.monotonic()
        if now > deadline:
            raise CommandTimeout(timed_out)
        if channel.exit_status_ready():
            exited_at = exited_at or now
            if now - exited_at > EOF_GRACE:
                log.warning("no end of output %.0fs after the command ended; a background process "
                            "may hold its stdout", EOF_GRACE)
                return
        before = len(out) + len(err)
        _pump(channel, out, err)
        if len(out) + len(err) != before:
            exited_at = None


def _pump(channel: paramiko.Channel, out: bytearray, err: bytearray) -> None:
    """Move whatever is ready from the channel into the buffers, waiting briefly if nothing is."""
    moved = False
    if channel.recv_ready():
        out.extend(channel.recv(CHUNK))
        moved = True
    if channel.recv_stderr_ready():
        err.extend(channel.recv_stderr(CHUNK))
        moved = True
    if not moved:
        time.sleep(0.005)


def write_file(host: Host, path: str, data: bytes, timeout: float = 60) -> None:
    """Write a small file on the host atomically (temporary name in the same folder, then rename);
    privileged: its callers write journals and markers beside service data."""
    host.stream_to(host.privileged(["sh", "-c", 'cat > "$1.tmp" && mv -f "$1.tmp" "$1"', "sh", path]),
                   [data], timeout=timeout)


def host_for(stack: Stack, node: Node | str) -> Host:
    """The Host to reach ``node`` of ``stack``: local for ``transport: local``, else SSH."""
    node = stack.node(node) if isinstance(node, str) else node
    if node.transport == "local":
        return LocalHost(node.name)
    return SshHost(node.name, node.address, stack.ssh_for(node))
