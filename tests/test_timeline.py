"""benchmarks/timeline.py against a real Prefect server: a flow's task runs and its subflow's,
read back in start order with their durations."""
from __future__ import annotations

import time

import pytest
from prefect import flow, task

from benchmarks.timeline import render, timeline

pytestmark = pytest.mark.usefixtures("prefect_server")


@task(name="nap")
def nap(seconds: float) -> None:
    time.sleep(seconds)


@flow(name="inner")
def inner() -> None:
    nap(0.3)


@flow(name="outer")
def outer() -> None:
    nap(0.2)
    inner()


def test_timeline_lists_tasks_and_subflow_tasks_in_order():
    state = outer(return_state=True)
    tl = timeline(state.state_details.flow_run_id)
    first, call, second = tl["steps"]  # the subflow's call, then its own task
    assert first["name"].startswith("nap") and call["name"].startswith("inner"), tl
    assert second["name"].startswith("inner/nap"), tl
    assert first["seconds"] >= 0.2 and second["seconds"] >= 0.3 and call["seconds"] >= 0.3
    assert second["start"] >= first["start"] + 0.2
    assert tl["flow"] >= 0.5
    shown = render(tl, top=1).splitlines()
    assert len(shown) == 2 and "inner" in shown[0] and "flow run:" in shown[1]
