"""SSH connections shared by a whole run: one per node instead of one per task and step.

``tasks/hosts.py``'s SshHost borrows from the pool while ``shared_ssh()`` is active in the
process (a backup run: its tasks run on threads of this process), and opens its own otherwise.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import paramiko

from config.model import SshSettings
from tasks import openssh


class SshPool:
    """SSH connections shared by every Host of a run, one per node (each costs a key exchange
    and, on the node, an sshd process). paramiko multiplexes the channels of one transport across
    threads; a Host still runs one command at a time, so a connection carries at most
    ``MAX_HOSTS`` Hosts at once (OpenSSH's MaxSessions is 10) and a busier node gets another."""

    MAX_HOSTS = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, int, str], list[list]] = {}  # key -> [[client, hosts, retired]]
        self._connecting: dict[tuple[str, int, str], threading.Lock] = {}
        self._streams: dict[tuple[str, int, str], openssh.OpenSshStreams | None] = {}
        self._starting: dict[tuple[str, int, str], threading.Lock] = {}
        self._closed = False

    def streams(self, address: str, settings: SshSettings, host_key: paramiko.PKey) -> openssh.OpenSshStreams | None:
        """The node's OpenSSH streams, one master for the run (None: they stay on paramiko)."""
        key = (address, settings.port, settings.user)
        with self._lock:
            starting = self._starting.setdefault(key, threading.Lock())
        with starting:
            with self._lock:
                if key in self._streams:
                    return self._streams[key]
            found = openssh.open_streams(address, settings, host_key)
            with self._lock:
                if not self._closed:
                    self._streams[key] = found
                    return found
            if found is not None:  # the run ended while it started
                found.close()
            return None

    def _start_streams(self, address: str, settings: SshSettings, client: paramiko.SSHClient) -> None:
        """Start the node's OpenSSH master while the run's first commands go on (about 0.2 s
        that its first stream would otherwise wait)."""
        host_key = client.get_transport().get_remote_server_key()
        threading.Thread(target=self.streams, args=(address, settings, host_key), daemon=True).start()

    def lease(self, address: str, settings: SshSettings,
              connect: Callable[[str, SshSettings], paramiko.SSHClient]) -> paramiko.SSHClient:
        key = (address, settings.port, settings.user)
        with self._lock:
            connecting = self._connecting.setdefault(key, threading.Lock())
        with connecting:  # two threads wanting the same node make one connection
            with self._lock:
                slots = self._slots.setdefault(key, [])
                for slot in list(slots):
                    transport = slot[0].get_transport()
                    if transport is None or not transport.is_active():
                        if slot[1] == 0:
                            slots.remove(slot)
                            slot[0].close()
                    elif slot[1] < self.MAX_HOSTS and not slot[2]:
                        slot[1] += 1
                        return slot[0]
            client = connect(address, settings)
            with self._lock:
                slots.append([client, 1, False])
                first = key not in self._streams and key not in self._starting
            if first and settings.openssh_streams:
                self._start_streams(address, settings, client)
            return client

    def release(self, client: paramiko.SSHClient, broken: bool) -> None:
        """``broken``: the Host saw the connection fail. It is then retired (leased no more) and
        closed once its last Host lets go: closing it now would end the other Hosts' commands
        mid-way, whose outcome would then be unknown (a failed channel open under load is not a
        dead connection; a dead one fails their commands by itself)."""
        with self._lock:
            for slots in self._slots.values():
                for slot in slots:
                    if slot[0] is client:
                        slot[1] -= 1
                        slot[2] = slot[2] or broken
                        if slot[2] and slot[1] == 0:
                            slots.remove(slot)
                            client.close()
                        return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for slots in self._slots.values():
                for client, _, _ in slots:
                    client.close()
            self._slots.clear()
            streams, self._streams = list(self._streams.values()), {}
        for found in streams:
            if found is not None:
                found.close()


_pool: SshPool | None = None
_pool_users = 0
_pool_lock = threading.Lock()


@contextmanager
def shared_ssh() -> Iterator[None]:
    """While inside, every SshHost of this process reuses one connection per node (the run's
    tasks, on any thread); the connections close when the last user leaves."""
    global _pool, _pool_users
    with _pool_lock:
        if _pool is None:
            _pool = SshPool()
        _pool_users += 1
    try:
        yield
    finally:
        with _pool_lock:
            _pool_users -= 1
            if _pool_users == 0 and _pool is not None:
                _pool.close()
                _pool = None


def current() -> SshPool | None:
    """The active pool, or None outside ``shared_ssh()``."""
    return _pool
