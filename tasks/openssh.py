"""A node's streams through the OpenSSH client, beside paramiko's commands.

A backup's or a restore's bytes cross SSH in a few long streams. paramiko handles them in this
process's Python, under the GIL: receiving costs it 1.8-1.9 CPU-s per GiB, the ``ssh`` client
about 0.7, in a process of its own (benchmarks/ssh_transports.py). So when ``ssh`` is installed,
``SshHost.stream_from`` and ``stream_to`` run through it; every other command stays on paramiko,
which also decides whom to trust:

- OpenSSH trusts exactly the host key paramiko verified for the node (a known_hosts of one line,
  under a HostKeyAlias), so both talk to the same verified host, whatever the unknown-host policy.
- The same identity (``key_file``, else the default ones), never an agent, no user or system
  configuration (``-F none``), no forwarding, BatchMode (never a prompt).
- One master connection per node (ControlMaster), its socket in a private temporary folder; each
  stream is one session of it (about 10 ms to open). It ends when its owner closes it, or 60 s
  after its last session if the owner died.
- A command whose argv carries a secret never goes this way (it would show in ``ps``).

If the master cannot start (no ``ssh``, an identity only paramiko reads, an old client), the node's
streams stay on paramiko, with a warning.
"""
from __future__ import annotations

import logging
import math
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import paramiko

from config.model import SshSettings
from tasks.local_streams import StreamFailed

log = logging.getLogger(__name__)

#: Sessions at once over one master: below sshd's MaxSessions (10); a stream beyond goes over paramiko.
MAX_SESSIONS = 8
#: How long a master with no session left waits for another before it exits (a crashed owner).
IDLE_SECONDS = 60
ALIAS = "thb-node"


def _host_key_algorithms(key: paramiko.PKey) -> str:
    name = key.get_name()
    return "rsa-sha2-512,rsa-sha2-256" if name == "ssh-rsa" else name


class OpenSshStreams:
    """Streams to one node over one OpenSSH master connection."""

    def __init__(self, address: str, settings: SshSettings, host_key: paramiko.PKey):
        self.address = address
        self.folder = Path(tempfile.mkdtemp(prefix="thb-ssh-"))  # 0700: the socket's only guard
        known_hosts = self.folder / "known_hosts"
        known_hosts.write_text(f"{ALIAS} {host_key.get_name()} {host_key.get_base64()}\n")
        identity = (["-i", str(settings.key_file), "-o", "IdentitiesOnly=yes"] if settings.key_file else [])
        self.base = [
            "ssh", "-F", "none", "-T", "-x", "-a", "-p", str(settings.port), "-l", settings.user,
            "-o", "BatchMode=yes", "-o", f"ConnectTimeout={math.ceil(settings.connect_timeout)}",
            "-o", f"HostKeyAlias={ALIAS}", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-o", f"HostKeyAlgorithms={_host_key_algorithms(host_key)}", "-o", "IdentityAgent=none",
            *identity,
            # AES-GCM first, as paramiko's side does (about half the CPU of OpenSSH's default here)
            "-o", "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com",
            "-o", "ServerAliveInterval=30", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR",
            "-o", f"ControlPath={self.folder / 'master'}",
        ]
        self.socket = self.folder / "master"
        self.sessions = threading.BoundedSemaphore(MAX_SESSIONS)
        self._timeout = settings.connect_timeout + 15
        self._starting = threading.Lock()

    def start(self) -> None:
        """Open the master connection (raises StreamFailed with ssh's message if it cannot)."""
        p = subprocess.run([*self.base, "-o", "ControlMaster=yes", "-o", f"ControlPersist={IDLE_SECONDS}",
                            "-N", "-f", "--", self.address],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=self._timeout)
        if p.returncode != 0:
            raise StreamFailed(p.returncode, p.stderr)

    def argv(self, command: str) -> list[str]:
        """The local argv running the remote shell line ``command`` as a session of the master.
        A master gone (idle for IDLE_SECONDS, or its connection lost) is started again; if it
        cannot be, the session makes a connection of its own, with the same checks."""
        with self._starting:
            if not self.socket.exists():
                try:
                    self.start()
                except (OSError, subprocess.SubprocessError, StreamFailed) as exc:
                    log.warning("%s: no OpenSSH master connection (%s); this stream connects alone",
                                self.address, exc)
        return [*self.base, "-o", "ControlMaster=no", "--", self.address, command]

    def close(self) -> None:
        try:
            if self.socket.exists():
                subprocess.run([*self.base, "-O", "exit", "--", self.address], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            pass  # the master ends by itself once idle
        shutil.rmtree(self.folder, ignore_errors=True)


def open_streams(address: str, settings: SshSettings, host_key: paramiko.PKey) -> OpenSshStreams | None:
    """The node's OpenSSH streams, or None (streams stay on paramiko) when they cannot start."""
    if not settings.openssh_streams or shutil.which("ssh") is None:
        return None
    streams = OpenSshStreams(address, settings, host_key)
    try:
        streams.start()
    except (OSError, subprocess.SubprocessError, StreamFailed) as exc:
        detail = exc.stderr.decode(errors="replace").strip() if isinstance(exc, StreamFailed) else str(exc)
        log.warning("%s: streams stay on paramiko: the OpenSSH client could not connect: %s", address, detail)
        streams.close()
        return None
    return streams
