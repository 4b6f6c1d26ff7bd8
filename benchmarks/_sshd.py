"""The harness's real sshd on 127.0.5.x (never a test stack's /24), for the SSH benchmarks."""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from config.model import SshSettings


@contextmanager
def loopback_sshd() -> Iterator[tuple[str, SshSettings]]:
    """(address, SshSettings) of a started sshd, stopped on exit."""
    from tests.stack.stack import Layout, RealStack

    with tempfile.TemporaryDirectory(prefix="thb-bench-ssh-") as tmp:
        stack = RealStack(Path(tmp), Layout(net="127.0.5", jmx_offset=35000))
        try:
            sshd = stack.sshd
            yield stack.layout.addr(1), SshSettings(user="root", port=sshd.port, key_file=str(sshd.client_key),
                                                    known_hosts=str(sshd.known_hosts))
        finally:
            stack.stop()
