"""Retry policy shared by every task: back off and retry transient faults, never definite ones."""
from __future__ import annotations

import socket

import botocore.exceptions
import paramiko

from tasks.repositories import TransientRepositoryError

RETRY_DELAYS = [2, 10, 30]


def is_transient(exc: BaseException | None) -> bool:
    """Connection resets, timeouts, S3 5xx, Elasticsearch 429/503 — a retry may help.

    Our own errors carry a ``transient`` flag; auth failures, unknown host keys, missing
    keyspaces and failed commands are definite and fail the step at once.
    """
    if exc is None:
        return False
    flag = getattr(exc, "transient", None)
    if flag is not None:
        return bool(flag)
    return isinstance(exc, (TransientRepositoryError, ConnectionResetError, socket.timeout,
                            TimeoutError, EOFError, paramiko.SSHException,
                            botocore.exceptions.EndpointConnectionError))


def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: the failed state's data is the exception."""
    return is_transient(state.data if isinstance(state.data, BaseException) else None)


#: Keyword arguments for ``@task``: retries with backoff on transient faults only.
RETRYING = dict(retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
                retry_condition_fn=retry_transient)
