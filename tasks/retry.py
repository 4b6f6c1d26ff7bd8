"""The retry policy: which layer retries which kind of call, and how errors say "a retry may help".

One layer per kind of call, so that one failing call is tried a bounded, known number of times:

===========================  =====================================  ======================================
Kind of call                 Retried by (the one layer)             Not retried by
===========================  =====================================  ======================================
repository stat, list, get   ``RetryingRepository``: 4 tries,       boto3 (``total_max_attempts=1``); the
(opening), delete,           backoff 1, 2, 4 s; then definite       task (``RetriesExhausted`` is not
put_bytes, put_if_absent,    (``RetriesExhausted``)                 transient)
clean_temporary
repository ``put`` of a      the task (``RETRYING``: 4 tries,       ``RetryingRepository`` (a stream is
stream, a stream broken      2, 10, 30 s): re-reads the source      one-shot); boto3
mid-read
Elasticsearch HTTP calls     the task, for idempotent steps only    the client (``max_retries=0``: one URL,
                             (snapshot create, restore, keep        no backoff, a retry reaches the same
                             previous index)                        node at once)
nodetool / commands over     the task, for idempotent steps only    ``hosts.py`` (never retries)
SSH or locally               (snapshot, clearsnapshot, stop/start…)
a table's tar stream ending  ``table_archive.stream_table``: 3       the task (the error after the last
only with "file changed as   streams (a snapshot's files are         stream is a definite CommandFailed)
we read it"                  immutable: only their ctime moved)
CQL (driver)                 the driver's default retry policy      the task (driver errors carry no
                                                                    ``transient`` flag)
===========================  =====================================  ======================================

The lock's refresh loop (``tasks/lock.py``) is the lock's heartbeat, not a retry of one call: it
tries again every 30 s until its give-up time, each try one retried ``put_bytes``.

Steps that change a system are declared with ``side_effect_task``: never cached, and retried on
transient faults only when ``retry`` is true, that is when a second attempt after a lost answer
finishes the same work (``nodetool snapshot`` and the ES snapshot treat "exists with our name"
as done). Non-idempotent steps (drop/create keyspace, create the loader role, hooks) set
``retry=False``.

Classification is one idea: an error class says whether a retry may help with a ``transient``
class attribute (``HostError``, ``RepositoryError``/``TransientRepositoryError``,
``ElasticsearchError``…). Backends wrap their library's errors (paramiko, botocore, elastic
transport) into those classes, so this module imports none of them; of foreign errors only the
standard library's connection faults count as transient.
"""
from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

RETRY_DELAYS = [2, 10, 30]

#: Standard-library faults that a retry may cure when they escape unwrapped.
TRANSIENT_BUILTINS = (ConnectionResetError, TimeoutError, EOFError)


def is_transient(exc: BaseException | None) -> bool:
    """Connection resets, timeouts, S3 5xx, Elasticsearch 429/503: a retry may help.

    Our errors carry a ``transient`` flag; auth failures, unknown host keys, missing keyspaces,
    failed commands and exhausted repository retries are definite and fail the step at once.
    """
    if exc is None:
        return False
    flag = getattr(exc, "transient", None)
    if flag is not None:
        return bool(flag)
    return isinstance(exc, TRANSIENT_BUILTINS)


def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: the failed state's data is the exception."""
    return is_transient(state.data if isinstance(state.data, BaseException) else None)


#: Keyword arguments for ``@task``: retries with backoff on transient faults only.
RETRYING: dict[str, Any] = dict(retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
                retry_condition_fn=retry_transient)


def side_effect_task(*, retry: bool = True, **options):
    """``@task`` for a step that changes a system: never cached (whatever
    ``PREFECT_TASKS_DEFAULT_NO_CACHE`` says), retried on transient faults when ``retry``."""
    return task(cache_policy=NO_CACHE, **(RETRYING if retry else {}), **options)
