"""A real OpenSSH server for the test stack: the SSH/SFTP transport the backup tool uses in production.

One ``sshd`` process listens on every test node address, so "ssh to node 127.0.0.2" reaches a real
sshd bound to that address. It has its own host key and accepts one client key; clients verify the
host key against a known_hosts file written here, never by auto-accepting it.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.stack.proc import Service, port_open, wait_until, write_service

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SshServer:
    """The sshd plus what a client needs: its private key and a known_hosts that trusts the host key."""

    addresses: list[str]
    port: int
    client_key: Path
    known_hosts: Path
    host_public_key: str
    service: Service
    user: str = "root"
    #: Folder of per-user authorized keys (``<folder>/<user>``), readable by every user: sshd reads
    #: a non-root user's keys with that user's rights (tests/stack/least_privilege.py).
    user_keys: Path | None = None

    @property
    def path_dir(self) -> Path:
        """First on the PATH of every SSH session: a test puts stand-in commands here (``docker``)."""
        return self.service.dir / "path"

    def start(self, timeout: float = 30) -> None:
        self.service.start()
        for address in self.addresses:
            wait_until(lambda address=address: port_open(address, self.port), f"sshd on {address}:{self.port}",
                       timeout, self.service, interval=0.1)

    def stop(self) -> None:
        self.service.stop()
        if self.user_keys is not None:
            shutil.rmtree(self.user_keys, ignore_errors=True)


def _keygen(key: Path) -> None:
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)],
                       check=True, timeout=30)


def _public_key_line(key: Path) -> str:
    """``ssh-ed25519 AAAA...`` without the comment, as known_hosts lines carry it."""
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


def other_host_key_line() -> str:
    """A fresh, unrelated ed25519 public key: for a known_hosts that must NOT match the server."""
    return Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def write_known_hosts(path: Path, addresses: list[str], port: int, key_line: str) -> Path:
    """One ``[addr]:port <key>`` line per address (plain ``addr`` on port 22, as OpenSSH writes it)."""
    hosts = [address if port == 22 else f"[{address}]:{port}" for address in addresses]
    path.write_text("".join(f"{host} {key_line}\n" for host in hosts))
    return path


def make_sshd(root: Path, *, addresses: list[str], port: int = 2222) -> SshServer:
    """Prepare (not start) an sshd under ``root`` listening on every address at ``port``."""
    root.mkdir(parents=True, exist_ok=True)
    host_key, client_key = root / "ssh_host_ed25519_key", root / "id_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    (root / "path").mkdir(exist_ok=True)  # not bin/: the sshd's own start/stop/status are there
    (root / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
    # pytest's folders are root-only: another user's keys live where that user can read them.
    user_keys = Path(tempfile.mkdtemp(prefix="thb-sshd-keys-"))
    user_keys.chmod(0o755)
    lines = [f"ListenAddress {address}:{port}" for address in addresses] + [
        f"HostKey {host_key}",
        f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'} {user_keys}/%u",
        "StrictModes no",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UseDNS no",
        "Subsystem sftp internal-sftp",
        "MaxStartups 100:30:200",
        "MaxSessions 50",
        "LogLevel VERBOSE",
        # Stand-in commands (tests/stack/compose.py's docker) come before the machine's own.
        # SHLVL=1: bash runs ~/.bashrc for a command sshd starts only at shell level 1, and this
        # machine's (`pyenv init`: ~120 ms and a hundred processes) would run on every exec.
        # (sshd keeps only the first SetEnv line: one line for both.)
        f"SetEnv PATH={root / 'path'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SHLVL=1",
    ]
    config = root / "sshd_config"
    config.write_text("\n".join(lines) + "\n")
    # sshd's privilege-separation directory; /run is a tmpfs, so a reboot removes it.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"sshd rejects {config}: {check.stderr}")
    host_line = _public_key_line(host_key)
    known_hosts = write_known_hosts(root / "known_hosts", addresses, port, host_line)
    service = write_service(root, "sshd", [SSHD, "-D", "-e", "-f", str(config)], grace_seconds=10)
    return SshServer(list(addresses), port, client_key, known_hosts, host_line, service, user_keys=user_keys)
