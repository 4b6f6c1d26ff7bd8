"""Stopping and starting services in order, with hooks and health waits: the one lifecycle of
cold backup, cold restore, restore (TheHive alone) and, next, node rebuild.

The order is tasks/services.py's plan (``stop_plan``/``start_plan``); this module only runs it,
either as Prefect tasks (inside a flow: visible in the UI, retried as the tasks say) or, with
``plain=True``, on plain threads (cancellation and crash hooks, which run outside a flow's task
runner, and tests). Both executors run the same steps and record the same events.

Every call appends to the caller's ``events`` (``{"t", "event", "service", "node", ...}``), so a
flow proves the order and the waits from data. A typical sequence, e.g. for one node::

    errors = run_hooks(st, "before_stop", run_id, events)
    stop_in_order(st, events, only=["cassandra"], nodes=["hive2"])   # raises if it does not stop
    run_hooks(st, "after_stop", run_id, events)
    ...                                                               # work on the stopped node
    errors = run_hooks(st, "before_start", run_id, events)
    errors += start_in_order(st, events, only=["cassandra"], nodes=["hive2"])  # never raises
    errors += run_hooks(st, "after_start", run_id, events)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from prefect import Task
from prefect.futures import PrefectFuture

from config.model import Stack
from tasks import hooks, services
from tasks.services import ServiceError, Step, event

MAX_THREADS = 16
Submit = Callable[..., Any]  # submit(task, *args) -> PrefectFuture | concurrent Future


@contextmanager
def _executor(plain: bool) -> Iterator[Submit]:
    """``submit(task, *args)``: the task submitted to the flow's task runner, or (plain) its
    function run on a thread of a pool that lasts as long as the ``with`` (one step)."""
    if not plain:
        yield lambda t, *args: t.submit(*args)
        return
    with ThreadPoolExecutor(MAX_THREADS) as pool:
        yield lambda t, *args: pool.submit(t.fn, *args)


def _outcome(future: PrefectFuture | Future) -> tuple[bool, Any]:
    """(True, result) or (False, why it failed), for either kind of future."""
    if isinstance(future, Future):
        exc = future.exception()
        return (True, future.result()) if exc is None else (False, f"{type(exc).__name__}: {exc}")
    future.wait()
    if future.state.is_completed():
        return True, future.result()
    return False, future.state.message or str(future.state.type)


def collect(futures: dict[str, PrefectFuture | Future], events: list[dict], service: str | None,
            failed_event: str) -> list[str]:
    """Wait for per-node futures; add their events (or a failure event); return the errors."""
    errors = []
    for node, future in futures.items():
        ok, value = _outcome(future)
        if ok:
            events += value
        else:
            events.append(event(failed_event, service, node, error=value[-1000:]))
            errors.append(f"{service or 'hook'} on {node}: {value}")
    return errors


def run_hooks(st: Stack, step: str, backup_id: str, events: list[dict], plain: bool = False) -> list[str]:
    """Run the stack's hooks of ``step`` (all at once); never raises, returns what failed."""
    with _executor(plain) as submit:
        futures = {f"{h.node}#{i}": submit(hooks.hook_task, st, step, i, backup_id)
                   for i, h in enumerate(getattr(st.hooks, step))}
        return [f"hook {step}: {e}" for e in collect(futures, events, None, "hook-failed")]


def _run_step(st: Stack, step: Step, events: list[dict], plain: bool) -> list[str]:
    """One step of the plan, all its nodes at once; the errors."""
    with _executor(plain) as submit:
        if step.action == "healthy":
            return collect({"*": submit(services.wait_healthy_task, st, step.service)}, events,
                           step.service, "unhealthy")
        task: Task = services.stop_node_task if step.action == "stop" else services.start_node_task
        return collect({n: submit(task, st, step.service, n) for n in step.nodes}, events,
                       step.service, f"{step.action}-failed")


def stop_in_order(st: Stack, events: list[dict], only: Iterable[str] | None = None,
                  nodes: Iterable[str] | None = None, plain: bool = False) -> None:
    """Stop in order, each service waited until really stopped on all its nodes; raise
    ServiceError at the first service that does not stop (the ones after it stay up)."""
    for step in services.stop_plan(st, only, nodes):
        errors = _run_step(st, step, events, plain)
        if errors:
            raise ServiceError("could not stop " + "; ".join(errors))


def start_in_order(st: Stack, events: list[dict], only: Iterable[str] | None = None,
                   nodes: Iterable[str] | None = None, plain: bool = False) -> list[str]:
    """Start in order and wait for health; every service is tried whatever failed before; returns
    what went wrong (raises only for an ``only`` naming no declared service)."""
    errors: list[str] = []
    for step in services.start_plan(st, only, nodes):
        errors += _run_step(st, step, events, plain)
    return errors


def start_all(st: Stack) -> tuple[list[dict], list[str]]:
    """Start every service in order without Prefect (cancellation/crash hooks, test safety nets):
    the events and what went wrong; never raises."""
    events: list[dict] = []
    try:
        errors = start_in_order(st, events, plain=True)
    except Exception as exc:  # an unknown service, say: a hook must still not raise
        errors = [f"{type(exc).__name__}: {exc}"]
    return events, errors
