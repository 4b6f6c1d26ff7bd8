"""Streams to and from a local process: LocalHost's commands, and the OpenSSH client's sessions
(tasks/openssh.py) that carry an SSH Host's streams.

As over paramiko, a stream fails as stalled when a read from the process or a write to it waits
``timeout`` seconds (the time our side spends on a chunk never counts), or when the process is not
done ``finish`` seconds after its input ended. A process ended early is killed with everything it
started (its own process group), so that nothing is left holding our pipes.
"""
from __future__ import annotations

import fcntl
import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import cast

CHUNK = 1024 * 1024
_F_SETPIPE_SZ = 1031  # Linux: a 1 MiB pipe hands on 1 MiB reads, not 64 KiB ones


class StreamStalled(Exception):
    """A read or write waited the stream's timeout, or its process did not end in time."""


class StreamFailed(Exception):
    """The process exited with ``exit_code`` (the ssh client: 255 is the connection's)."""

    def __init__(self, exit_code: int, stderr: bytes):
        super().__init__(exit_code)
        self.exit_code, self.stderr = exit_code, stderr


class _Watchdog:
    """Kills a stream's process once a read from it or a write to it has waited ``timeout``
    seconds (as paramiko's channel timeout: the time our side spends on a chunk never counts)."""

    def __init__(self, process: subprocess.Popen, timeout: float):
        self.process, self.timeout = process, timeout
        self.since: float | None = None  # when the pending read or write began
        self.stalled = False
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        self.since = time.monotonic()
        try:
            yield
        finally:
            self.since = None

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.timeout)):
            since = self.since
            if since is not None and time.monotonic() - since > self.timeout and self.process.poll() is None:
                self.stalled = True
                _kill(self.process)
                return

    def stop(self) -> None:
        self._done.set()


def _kill(p: subprocess.Popen) -> None:
    """The stream's process and any it started (its own group: nothing left holding our pipes)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _start(argv: Sequence[str], stdin: bool) -> subprocess.Popen:
    p = subprocess.Popen(list(argv), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    for pipe in (p.stdin, p.stdout):
        if pipe is not None:
            try:
                fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, CHUNK)
            except OSError:
                pass  # a smaller pipe only means smaller pieces
    return p


def drain_in_background(pipe) -> Callable[[], bytes]:
    """Read a pipe on a thread so a chatty stderr never blocks the process; return a getter."""
    buf = bytearray()
    def drain() -> None:
        for chunk in iter(lambda: pipe.read(65536), b""):
            buf.extend(chunk)

    t = threading.Thread(target=drain, daemon=True)
    t.start()

    def result() -> bytes:
        t.join(timeout=30)
        return bytes(buf)

    return result


def _finish(p: subprocess.Popen, watchdog: _Watchdog, stderr: Callable[[], bytes], wait: float,
            late: str) -> bytes:
    """Wait for the exit status once the stream has moved its last byte; raise on failure."""
    watchdog.stop()
    if watchdog.stalled:
        raise StreamStalled(f"silent for {watchdog.timeout}s")
    try:
        code = p.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        _kill(p)
        p.wait()
        raise StreamStalled(f"not done {wait:.0f}s after its {late} ended") from None
    err = stderr()
    if code != 0:
        raise StreamFailed(code, err)
    return err


def _feed(pipe: io.BufferedWriter, chunks: Iterable[bytes], watchdog: _Watchdog) -> None:
    """Write every chunk; what the process no longer reads is discarded (as READ_TO_EOF does over
    SSH), and every chunk is still taken, so that the checks they run go to the end. The exit
    status then says whether ending early was a failure."""
    reading = True
    for chunk in chunks:
        if reading:
            try:
                with watchdog.waiting():
                    pipe.write(chunk)
            except BrokenPipeError:
                reading = False
    try:
        pipe.close()
    except BrokenPipeError:
        pass


@contextmanager
def stream_from(argv: Sequence[str], timeout: float) -> Iterator[Iterator[bytes]]:
    """The stdout of the local command ``argv`` in chunks; StreamStalled when silent for ``timeout``."""
    p = _start(argv, stdin=False)
    stderr = drain_in_background(p.stderr)
    watchdog = _Watchdog(p, timeout)

    stdout = cast(io.BufferedReader, p.stdout)

    def chunks() -> Iterator[bytes]:
        while True:
            with watchdog.waiting():
                chunk = stdout.read1(CHUNK)
            if not chunk:
                break
            yield chunk
        _finish(p, watchdog, stderr, timeout, "output")

    try:
        yield chunks()
    finally:
        watchdog.stop()
        if p.poll() is None:
            _kill(p)
        p.wait()
        stdout.close()


def stream_to(argv: Sequence[str], chunks: Iterable[bytes], timeout: float, finish: float) -> tuple[bytes, bytes]:
    """Feed ``chunks`` to the local command ``argv``; its (stdout, stderr). StreamStalled when a
    write waits ``timeout`` or the command is not done ``finish`` seconds after its input."""
    p = _start(argv, stdin=True)
    out, err = drain_in_background(p.stdout), drain_in_background(p.stderr)
    watchdog = _Watchdog(p, timeout)
    try:
        _feed(cast(io.BufferedWriter, p.stdin), chunks, watchdog)
        stderr = _finish(p, watchdog, err, finish, "input")
        return out(), stderr
    finally:
        watchdog.stop()
        if p.poll() is None:
            _kill(p)
            p.wait()
