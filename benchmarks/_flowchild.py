"""One flow call in its own process, so that its peak RSS is its own (benchmarks/compare.py).

    python -m benchmarks._flowchild OUT.json hot_backup|restore '{"stack": ..., ...}'

Writes {"result": <the flow's return value>, "seconds": <time of the flow call alone>,
"timeline": <its task runs, benchmarks/timeline.py>} to OUT.json. PREFECT_API_URL must name the
parent's Prefect server.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import time

from benchmarks.timeline import timeline  # imports Prefect only when called

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")


PR_SET_CHILD_SUBREAPER = 36


def _adopt_orphans() -> None:
    """Become the subreaper of what the flow starts: the OpenSSH master connections daemonise
    themselves (``ssh -f``, tasks/openssh.py) and would otherwise leave the process tree, and
    their CPU the figures."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap_orphans(wait: float = 10.0) -> None:
    """Wait for the adopted processes (the masters end when their run closes them), so that their
    CPU reaches this process's RUSAGE_CHILDREN and, through it, the parent's."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def main(argv: list[str]) -> int:
    out, name, kwargs = argv[0], argv[1], json.loads(argv[2])
    _adopt_orphans()
    if name == "hot_backup":
        from flows.hot_backup import hot_backup as flow
    elif name == "restore":
        from flows.restore import restore as flow
    else:
        raise SystemExit(f"unknown flow {name!r}")
    logging.getLogger("cassandra.cluster").setLevel(logging.ERROR)
    t0 = time.monotonic()
    state = flow(**kwargs, return_state=True)
    seconds = time.monotonic() - t0
    _reap_orphans()
    result = state.result()  # raises the flow's error
    with open(out, "w") as f:
        json.dump({"result": result, "seconds": seconds,
                   "timeline": timeline(state.state_details.flow_run_id)}, f, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
