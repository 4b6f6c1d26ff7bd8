"""The fan-out of per-node work: limits per node and in all, turns between nodes, fail-fast.

Futures here finish at once; what is checked is what ``fan_out`` keeps in flight when it submits."""
from __future__ import annotations

from dataclasses import dataclass

from flows.common import fan_out


@dataclass(frozen=True)
class State:
    failed: bool

    def is_failed(self) -> bool:
        return self.failed


class Done:
    """A finished future, as ``prefect.futures.as_completed`` sees one."""

    def __init__(self, failed: bool = False):
        self._final_state = self.state = State(failed)


class Recorder:
    def __init__(self, fail: set = frozenset()):
        self.open: dict[str, int] = {}
        self.order: list[tuple[str, int]] = []
        self.peak_total = 0
        self.peak_per_key = 0
        self.fail = fail
        self.key_of: dict[Done, str] = {}

    def submit(self, key: str, item: int) -> Done:
        self.open[key] = self.open.get(key, 0) + 1
        self.peak_total = max(self.peak_total, sum(self.open.values()))
        self.peak_per_key = max(self.peak_per_key, self.open[key])
        self.order.append((key, item))
        future = Done(failed=(key, item) in self.fail)
        self.key_of[future] = key
        return future

    def done(self, future: Done) -> None:
        self.open[self.key_of[future]] -= 1


def queues():
    return {"n1": range(5), "n2": range(5), "n3": range(5)}


def test_per_node_limit_only():
    r = Recorder()
    finished = fan_out(queues(), r.submit, 2, r.done)
    assert len(finished) == 15 and r.peak_per_key == 2 and r.peak_total == 6


def test_a_total_limit_is_shared_in_turn():
    r = Recorder()
    finished = fan_out(queues(), r.submit, 2, r.done, total=4)
    assert len(finished) == 15 and r.peak_total == 4 and r.peak_per_key == 2
    assert [k for k, _ in r.order[:4]] == ["n1", "n2", "n3", "n1"]  # no node waits for another's queue


def test_nothing_new_after_a_failure():
    r = Recorder(fail={("n1", 0), ("n2", 0)})  # the two first submitted: whichever ends first fails
    finished = fan_out(queues(), r.submit, 1, r.done, total=2)
    assert len(finished) == 2 and all(f.state.is_failed() for f in finished)  # nothing started after
