"""The repository bandwidth cap: a token bucket on a clock the test drives, and the wrapper
around a real local repository (bytes intact, every stored and read byte paced)."""
from __future__ import annotations

import threading

import pytest

from config import load_stack
from tasks.repositories import open_repository
from tasks.repositories.local import LocalRepository
from tasks.repositories.throttled import MIB, ThrottledRepository, TokenBucket
from tests.unit.test_config import problems_of, valid_stack, write


class Clock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self):
        self.now, self.slept = 100.0, 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds
            self.slept += seconds


def test_a_burst_of_one_second_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)
    bucket.take(1000)  # the first second's bytes pass at once
    assert clock.slept == 0
    for _ in range(5):
        bucket.take(1000)
    assert clock.slept == pytest.approx(5.0)


def test_idle_time_refills_at_most_one_second():
    clock = Clock()
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)
    bucket.take(1000)
    clock.now += 60  # idle for a minute: still only one second of burst
    bucket.take(3000)
    assert clock.slept == pytest.approx(2.0)


def test_threads_share_one_rate():
    clock = Clock()
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)
    threads = [threading.Thread(target=lambda: [bucket.take(100) for _ in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 20 000 bytes at 1000 B/s after a 1000-byte burst: at least 19 s of pacing in all; each
    # taker sleeps for the debt it sees, so sleeps of parallel takers may overlap (never less)
    assert clock.slept >= 19.0 - 1e-6


def test_the_wrapper_paces_every_byte_and_keeps_them(tmp_path):
    clock = Clock()
    repo = ThrottledRepository(LocalRepository(tmp_path / "repo"),
                               TokenBucket(MIB, clock=clock, sleep=clock.sleep))
    data = bytes(range(256)) * (4 * 4096)  # 4 MiB
    assert repo.put("a/b", (data[i:i + MIB] for i in range(0, len(data), MIB))) == len(data)
    assert clock.slept == pytest.approx(3.0)
    assert repo.get_bytes("a/b") == data
    assert clock.slept == pytest.approx(7.0)
    repo.put_bytes("a/c", b"x" * MIB)
    assert clock.slept == pytest.approx(8.0)
    assert [o.key for o in repo.list("a/")] == ["a/b", "a/c"]


def test_the_stack_file_sets_the_cap_for_every_kind(tmp_path):
    data = valid_stack(tmp_path)
    data["repository"] = {"kind": "local", "path": str(tmp_path / "r"), "max_mib_per_second": 50}
    stack = load_stack(write(tmp_path, data))
    with open_repository(stack) as repo:
        assert isinstance(repo.inner, ThrottledRepository)  # type: ignore[attr-defined]
        assert repo.inner.bucket.rate == 50 * MIB  # type: ignore[attr-defined]
    for bad in (0, -5, "fast"):
        data["repository"]["max_mib_per_second"] = bad
        problems = problems_of(tmp_path, data)
        assert any("repository" in p and "max_mib_per_second" in p for p in problems), problems
