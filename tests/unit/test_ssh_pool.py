"""The run's shared SSH connections: bookkeeping only (real SSH: tests/test_fixed_costs.py)."""
from __future__ import annotations

from config.model import SshSettings
from tasks.ssh_pool import SshPool, current, shared_ssh


class _Transport:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


class _Client:
    """Stands in for paramiko.SSHClient: a transport that is active until closed."""

    def __init__(self) -> None:
        self.transport = _Transport()

    def get_transport(self) -> _Transport:
        return self.transport

    def close(self) -> None:
        self.transport.active = False


def test_one_connection_per_node_until_full_or_broken():
    made: list[_Client] = []

    def connect(address: str, settings: SshSettings) -> _Client:
        made.append(_Client())
        return made[-1]

    pool, ssh = SshPool(), SshSettings.model_construct(user="root", port=22, openssh_streams=False)
    first = [pool.lease("10.0.0.1", ssh, connect) for _ in range(SshPool.MAX_HOSTS)]  # type: ignore[arg-type]
    assert len(made) == 1 and all(c is made[0] for c in first)
    assert pool.lease("10.0.0.1", ssh, connect) is made[1]  # type: ignore[arg-type]  # full: another
    assert pool.lease("10.0.0.2", ssh, connect) is made[2]  # type: ignore[arg-type]
    pool.release(made[0], broken=False)
    assert pool.lease("10.0.0.1", ssh, connect) is made[0]  # type: ignore[arg-type]
    pool.release(made[2], broken=True)
    assert not made[2].transport.active
    assert pool.lease("10.0.0.2", ssh, connect) is made[3]  # type: ignore[arg-type]
    # broken for one Host while another still runs a command on it: retired, closed when free
    assert pool.lease("10.0.0.2", ssh, connect) is made[3]  # type: ignore[arg-type]
    pool.release(made[3], broken=True)
    assert made[3].transport.active
    assert pool.lease("10.0.0.2", ssh, connect) is made[4]  # type: ignore[arg-type]  # not leased again
    pool.release(made[3], broken=False)
    assert not made[3].transport.active
    pool.close()
    assert not any(c.transport.active for c in made)


def test_one_openssh_master_per_node_started_beside_its_first_connection(monkeypatch):
    import threading

    from tasks import openssh

    started: list[str] = []
    closed: list[str] = []
    release = threading.Event()

    class _Streams:
        def __init__(self, address: str) -> None:
            self.address = address

        def close(self) -> None:
            closed.append(self.address)

    def open_streams(address, settings, host_key):
        assert host_key == f"key of {address}"
        release.wait(5)
        started.append(address)
        return _Streams(address)

    class _KeyedTransport(_Transport):
        def __init__(self, address: str) -> None:
            super().__init__()
            self.address = address

        def get_remote_server_key(self) -> str:
            return f"key of {self.address}"

    def connect(address: str, settings: SshSettings) -> _Client:
        client = _Client()
        client.transport = _KeyedTransport(address)
        return client

    monkeypatch.setattr(openssh, "open_streams", open_streams)
    pool, ssh = SshPool(), SshSettings.model_construct(user="root", port=22)
    for _ in range(SshPool.MAX_HOSTS + 1):  # a second connection to the node: still one master
        pool.lease("10.0.0.1", ssh, connect)  # type: ignore[arg-type]
    pool.lease("10.0.0.2", ssh, connect)  # type: ignore[arg-type]
    release.set()
    first = pool.streams("10.0.0.1", ssh, "key of 10.0.0.1")  # type: ignore[arg-type]  # waits for it
    assert isinstance(first, _Streams) and first.address == "10.0.0.1"
    assert pool.streams("10.0.0.2", ssh, "key of 10.0.0.2").address == "10.0.0.2"  # type: ignore[arg-type, union-attr]
    assert sorted(started) == ["10.0.0.1", "10.0.0.2"]
    pool.close()
    assert sorted(closed) == ["10.0.0.1", "10.0.0.2"]

    # a master that comes up after its run's pool closed is closed at once, never handed out
    release.clear()
    late = SshPool()
    late.lease("10.0.0.3", ssh, connect)  # type: ignore[arg-type]
    late.close()
    release.set()
    for _ in range(100):
        if "10.0.0.3" in closed:
            break
        threading.Event().wait(0.05)
    assert "10.0.0.3" in closed
    assert late.streams("10.0.0.3", ssh, "key of 10.0.0.3") is None  # type: ignore[arg-type]


def test_shared_ssh_lives_while_any_user_does():
    assert current() is None
    with shared_ssh():
        outer = current()
        with shared_ssh():
            assert current() is outer
        assert current() is outer
    assert current() is None
