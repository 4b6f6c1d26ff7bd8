"""tasks/local_streams.py: streams to and from local processes (LocalHost's, and the ssh client's
sessions: tests/test_hosts.py runs them over the real sshd)."""
from __future__ import annotations

import time

import pytest

from tasks import local_streams


def test_a_stream_from_a_process_whole_and_its_failure_with_stderr():
    payload = bytes(range(256)) * 20000
    with local_streams.stream_from(["head", "-c", str(len(payload)), "/dev/stdin"], timeout=5) as chunks:
        pass  # opened and left unread: the process is ended, nothing hangs
    with local_streams.stream_from(["sh", "-c", "printf abc; echo oops >&2; exit 3"], timeout=5) as chunks:
        with pytest.raises(local_streams.StreamFailed) as err:
            assert b"".join(chunks) == b"abc"
    assert err.value.exit_code == 3 and err.value.stderr == b"oops\n"
    out, _ = local_streams.stream_to(["cat"], [payload[:1000], b"", bytearray(payload[1000:])], timeout=5, finish=5)
    assert out == payload


def test_silence_is_a_stall_but_our_own_slowness_is_not():
    with pytest.raises(local_streams.StreamStalled, match="silent for 0.3s"):
        with local_streams.stream_from(["sh", "-c", "echo a; sleep 30"], timeout=0.3) as chunks:
            list(chunks)
    got = []
    with local_streams.stream_from(["printf", "%s\\n", "a", "b"], timeout=0.3) as chunks:
        for chunk in chunks:
            time.sleep(0.8)
            got.append(chunk)
    assert b"".join(got) == b"a\nb\n"

    def slow():
        yield b"x"
        time.sleep(0.8)
        yield b"y"

    assert local_streams.stream_to(["cat"], slow(), timeout=0.3, finish=5)[0] == b"xy"


def test_a_command_that_does_not_end_after_its_input_is_a_stall():
    started = time.monotonic()
    with pytest.raises(local_streams.StreamStalled, match="not done 1s after its input ended"):
        local_streams.stream_to(["sh", "-c", "cat >/dev/null; sleep 30"], [b"x"], timeout=5, finish=1)
    assert time.monotonic() - started < 10


def test_a_command_that_stops_reading_fails_by_its_exit_status():
    with pytest.raises(local_streams.StreamFailed) as err:
        local_streams.stream_to(["sh", "-c", "head -c 1 >/dev/null; exit 4"], [b"x" * 65536] * 64, timeout=5, finish=5)
    assert err.value.exit_code == 4
