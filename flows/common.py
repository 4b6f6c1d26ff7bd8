"""Helpers shared by the flows: which stack, which keyspaces, bounded fan-out, failure checks."""
from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from prefect.futures import PrefectFuture, as_completed

from config import StackConfigError, load_stack, parse_stack_text
from config.model import Stack, cql_identifier
from tasks.catalog import mib  # noqa: F401  (the flows' one size format)

Component = Literal["cassandra", "elasticsearch", "files"]
ALL_COMPONENTS: list[Component] = ["cassandra", "elasticsearch", "files"]
log = logging.getLogger(__name__)


#: Where the stack comes from when a flow is given none: this environment variable (a path),
#: else this Prefect Variable (a path, or the stack file's YAML itself). No flow has a built-in
#: default, so a deployment can never act on a stack nobody named.
STACK_ENV = "THEHIVE_BACKUP_STACK"
STACK_VARIABLE = "thehive-backup-stack"


def resolve_stack(stack: str | Stack) -> Stack:
    """A flow's ``stack`` parameter: a stack file's path, a model, or '' for the configured one."""
    if isinstance(stack, Stack):
        return stack
    if stack:
        return load_stack(stack)
    if os.environ.get(STACK_ENV):
        return load_stack(os.environ[STACK_ENV])
    held = _stack_variable()
    if not held:
        raise StackConfigError("stack", [
            f"no stack file named: pass stack=<path>, set {STACK_ENV}=<path>, or set the Prefect "
            f"Variable {STACK_VARIABLE!r} to a path or to the stack file's text"])
    if "\n" not in held.strip():
        return load_stack(held.strip())
    return parse_stack_text(held, source=f"Prefect Variable {STACK_VARIABLE}")


def _stack_variable() -> str | None:
    """The Prefect Variable's value, or None when it is unset or there is no Prefect API (outside
    a flow run with no PREFECT_API_URL, asking would start a throwaway server)."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL
    from prefect.variables import Variable

    if FlowRunContext.get() is None and not PREFECT_API_URL.value():
        return None
    try:
        value = Variable.get(STACK_VARIABLE, default=None)
    except Exception as exc:  # no server: the same "name a stack" message is the useful one
        log.debug("Prefect Variable %s not readable: %s", STACK_VARIABLE, exc)
        return None
    return value if isinstance(value, str) else None


def resolve_keyspaces(stack: Stack, keyspaces: list[str] | None) -> list[str]:
    return [cql_identifier(k) for k in (keyspaces or stack.cassandra.keyspaces)]


def fan_out(queues: Mapping[str, Iterable[Any]], submit: Callable[[str, Any], PrefectFuture],
            per_key: int, on_done: Callable[[PrefectFuture], None],
            total: int | None = None) -> list[PrefectFuture]:
    """Submit work from several queues (one per node) keeping at most ``per_key`` in flight
    per queue and ``total`` in all, taking from the queues in turn; ``on_done`` sees each future
    as it completes (progress reporting). After the first failure nothing new is started."""
    pending = {k: deque(items) for k, items in queues.items()}
    in_flight: dict[PrefectFuture, str] = {}
    finished: list[PrefectFuture] = []

    def refill() -> None:
        started = True
        while started:  # one per queue and round, so that the queues share ``total``
            started = False
            for key, queue in pending.items():
                if total is not None and len(in_flight) >= total:
                    return
                if queue and sum(1 for k in in_flight.values() if k == key) < per_key:
                    in_flight[submit(key, queue.popleft())] = key
                    started = True

    refill()
    while in_flight:
        done = next(iter(as_completed(list(in_flight))))
        in_flight.pop(done)
        finished.append(done)
        on_done(done)
        if done.state.is_failed():  # fail fast: let what runs finish, start nothing new
            for queue in pending.values():
                queue.clear()
        refill()
    return finished


def raise_failures(futures: list[PrefectFuture], expected: int, what: str,
                   error: type[Exception] | None = None) -> list[Any]:
    """The results of a fan-out, or one ``error`` (default FanOutFailed) naming how many failed
    or never started and the first reason (fan_out starts nothing new after a failure)."""
    for f in futures:
        f.wait()
    failed = [f for f in futures if not f.state.is_completed()]
    if failed or len(futures) != expected:
        first = failed[0].state.message if failed else "not all started"
        raise (error or FanOutFailed)(f"{len(failed)} {what}, {expected - len(futures)} not started; "
                                      f"first: {first}")
    return [f.result() for f in futures]


class FanOutFailed(RuntimeError):
    """Some of a fan-out's steps failed; the message counts them and gives the first reason."""


class RestoreRefused(RuntimeError):
    """Validation failed, so nothing was touched; every reason is listed."""

    def __init__(self, backup_id: str, problems: list[str], what: str = "restore"):
        self.problems = problems
        super().__init__(f"{what} of {backup_id} refused, nothing was changed:\n- "
                         + "\n- ".join(problems))

