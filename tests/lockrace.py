"""Start N lock takers together, trial after trial, and count the winners of each trial.

Threads or processes (spawned: no state shared with the test process but the repository) meet
at a barrier, then all call ``acquire`` at once. After every taker has answered, the winner
releases, so the next trial starts on a free repository. Used by tests/unit and tests/faults.
"""
from __future__ import annotations

import multiprocessing
import threading
from collections import defaultdict
from collections.abc import Callable

from tasks.lock import RepositoryLocked, acquire, release
from tasks.repositories import Repository


def open_repository_from(settings: dict) -> Repository:
    """A picklable repository factory for spawned takers: a repository from the ``repository``
    section of a stack file (``RealStack.repository(kind, name)``), with the retry wrapper."""
    from pydantic import TypeAdapter

    from config.model import RepositorySettings
    from tasks.repositories.factory import open_repository

    only = type("OnlyRepository", (), {})()  # open_repository reads nothing but .repository
    only.repository = TypeAdapter(RepositorySettings).validate_python(settings)
    return open_repository(only)


def _taker(make_repo: Callable[[], Repository], index: int, trials: int, barrier, report) -> None:
    repo = make_repo()
    try:
        for trial in range(trials):
            barrier.wait()
            held = None
            try:
                held = acquire(repo, f"taker {index}")
                outcome = "won"
            except RepositoryLocked:
                outcome = "refused"
            except Exception as exc:  # reported, so that the test shows it
                outcome = f"error: {exc!r}"
            report.put((trial, index, outcome))
            barrier.wait()  # everyone has answered
            if held is not None:
                release(repo, held)
            barrier.wait()  # the repository is free again
    finally:
        repo.close()


def race(make_repo: Callable[[], Repository], takers: int, trials: int,
         mode: str = "thread") -> dict[int, dict[str, list[int]]]:
    """{trial: {outcome: [taker indexes]}} for ``trials`` simultaneous starts of ``takers``."""
    results: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    if mode == "thread":
        barrier = threading.Barrier(takers, timeout=120)
        lock = threading.Lock()

        class Report:
            @staticmethod
            def put(item):
                with lock:
                    results[item[0]][item[2]].append(item[1])

        report = Report()
        workers = [threading.Thread(target=_taker, args=(make_repo, i, trials, barrier, report))
                   for i in range(takers)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return results
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(takers, timeout=300), ctx.Queue()
    procs = [ctx.Process(target=_taker, args=(make_repo, i, trials, barrier, queue))
             for i in range(takers)]
    for p in procs:
        p.start()
    for _ in range(takers * trials):
        trial, index, outcome = queue.get(timeout=600)
        results[trial][outcome].append(index)
    for p in procs:
        p.join(timeout=60)
    return results
