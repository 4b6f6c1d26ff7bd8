"""An exclusive lock kept in the repository itself, beside the data (as restic does).

Two runs writing or restoring the same repository at once — a scheduled backup during a restore,
a prune during a backup — must never overlap, whatever machine or Prefect deployment starts them.

The lock is one object, ``locks/lock.json``, created with the repository's exclusive create
(``put_if_absent``), so of runs started together exactly one wins. A lock is stale — and broken by
the next taker — at once when its holder is a dead process on this host or a Prefect flow run in a
terminal state, otherwise after ``STALE_AFTER`` seconds without refresh. Breaking is itself
exclusive: only the run that creates ``locks/break-<nonce>.json`` for that lock's nonce removes it.
The format is in docs/FORMAT.md ("Lock").

Just over 400 lines on purpose: taking, refreshing, proving staleness and breaking are one
protocol whose races are reasoned about together; split, a reader would have to hold two files
in mind to check that exactly one run wins.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

from config.model import Stack
from tasks import layout
from tasks.repositories import ObjectNotFound, Repository, open_repository

log = logging.getLogger(__name__)

# The keys belong to the repository layout (tasks/layout.py); these names stay for this module's readers.
PREFIX = layout.LOCKS_PREFIX
LOCK_KEY = layout.LOCK_KEY
BREAK_PREFIX = layout.BREAK_PREFIX
LEGACY = layout.LEGACY_LOCK  # format 1: one object per taker
STALE_AFTER = 30 * 60
REFRESH_EVERY = 5 * 60
REFRESH_RETRY = 30
#: A break marker lives for milliseconds; one older than this belongs to a breaker that died.
BREAK_STALE_AFTER = 5 * 60


class LockError(RuntimeError):
    """The lock's state could not be established (unreadable lock, repository fault)."""


class RepositoryLocked(RuntimeError):
    """Another run holds the repository."""


class LockLost(BaseException):
    """Our lock could not be refreshed or was taken from us: the work must stop.

    A BaseException, like KeyboardInterrupt, so that the work's own ``except Exception``
    handlers cannot swallow the abort (Prefect records the run as Crashed)."""


@dataclass
class Holder:
    """What a lock object records about the run holding it."""

    key: str
    purpose: str = ""
    host: str = ""
    pid: int = 0
    created: float = 0
    refreshed: float = 0
    nonce: str = ""
    pid_start: int | None = None  # /proc start time: a reused PID is not the holder
    flow_run_id: str | None = None
    prefect_api: str | None = None  # the API that knows flow_run_id
    format: int = 2

    @classmethod
    def ours(cls, purpose: str, record_flow_run: bool = True) -> Holder:
        now = time.time()
        run_id, api = _prefect_run() if record_flow_run else (None, None)
        return cls(key=LOCK_KEY, purpose=purpose, host=socket.gethostname(), pid=os.getpid(),
                   created=now, refreshed=now, nonce=secrets.token_hex(8),
                   pid_start=_proc_start(os.getpid()), flow_run_id=run_id, prefect_api=api)

    @classmethod
    def parse(cls, key: str, data: bytes) -> Holder:
        try:
            body = json.loads(data)
            known = {k: body[k] for k in cls.__dataclass_fields__ if k in body and k != "key"}
            holder = cls(key=key, **known)
            holder.format = 1 if layout.is_legacy_lock_key(key) else int(body.get("format", 2))
            float(holder.refreshed)
        except (ValueError, TypeError, AttributeError) as exc:
            raise LockError(f"lock {key} is unreadable ({exc}); the `unlock` flow can remove it "
                            "(force=True, confirm=True)") from exc
        return holder

    def encode(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if k != "key"}
        return json.dumps(body).encode()

    def describe(self, now: float | None = None) -> str:
        now = now or time.time()
        return (f"{self.purpose} on {self.host} pid {self.pid}"
                + (f" (flow run {self.flow_run_id})" if self.flow_run_id else "")
                + f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(self.created))} UTC, "
                f"refreshed {int(now - self.refreshed)}s ago ({self.key})")


# -- is the holder still there? -----------------------------------------------------------------

def _prefect_run() -> tuple[str | None, str | None]:
    """The current Prefect flow run id and API URL, when inside a flow run on an API server."""
    if "prefect" not in sys.modules:
        return None, None  # not in a flow run, and no reason to import Prefect
    try:
        from prefect.context import FlowRunContext
        from prefect.settings import PREFECT_API_URL

        ctx = FlowRunContext.get()
        if ctx is None or ctx.flow_run is None:
            return None, None
        return str(ctx.flow_run.id), PREFECT_API_URL.value()
    except Exception:  # no Prefect context machinery: a plain lock
        return None, None


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int, start: int | None = None) -> bool:
    """Is ``pid`` (on this host) still the process that took the lock? Zombies are dead."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        pass
    now_start = _proc_start(pid)
    return start is None or now_start is None or now_start == start


def flow_run_final_state(flow_run_id: str, api_url: str | None) -> str | None:
    """The name of the flow run's state if it is terminal (Completed, Failed, Crashed,
    Cancelled), asked of the Prefect API; None if it is not, or if we cannot tell (another API
    server, API unreachable) — then the time rule decides."""
    try:
        from uuid import UUID

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL

        ours = PREFECT_API_URL.value()
        if not api_url or not ours or api_url.rstrip("/") != ours.rstrip("/"):
            return None
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(flow_run_id))
    except Exception as exc:
        log.warning("cannot ask Prefect about flow run %s: %s", flow_run_id, exc)
        return None
    state = run.state
    return state.name if state is not None and state.is_final() else None


def stale_reason(holder: Holder, now: float, stale_after: float = STALE_AFTER, *,
                 final_state: Callable[[str, str | None], str | None] | None = None) -> str | None:
    """Why ``holder`` no longer holds the lock, or None while it may."""
    final_state = final_state or flow_run_final_state
    if holder.host == socket.gethostname() and not process_alive(holder.pid, holder.pid_start):
        return f"its process {holder.pid} on this host ({holder.host}) is gone"
    if holder.flow_run_id:
        state = final_state(holder.flow_run_id, holder.prefect_api)
        if state:
            return f"its Prefect flow run {holder.flow_run_id} is {state}"
    idle = now - float(holder.refreshed)
    if idle > stale_after:
        return f"not refreshed for {int(idle // 60)} min (stale after {int(stale_after // 60)})"
    return None


# -- reading, taking, breaking, refreshing, releasing --------------------------------------------

def read_holder(repo: Repository, key: str) -> Holder | None:
    """The lock at ``key``; None only when it does not exist. A failed read raises."""
    try:
        data = repo.get_bytes(key)
    except ObjectNotFound:
        return None
    return Holder.parse(key, data)


def list_locks(repo: Repository) -> tuple[list[Holder], list[str]]:
    """Every lock (the current one and format-1 ones) and every break marker key."""
    holders, markers = [], []
    for obj in sorted(repo.list(PREFIX), key=lambda o: (o.key != LOCK_KEY, o.key)):
        if layout.is_break_marker(obj.key):
            markers.append(obj.key)
        elif layout.is_lock_key(obj.key):
            holder = read_holder(repo, obj.key)
            if holder is not None:
                holders.append(holder)
    return holders, markers


def _live_legacy(repo: Repository, stale_after: float) -> list[Holder]:
    """Format-1 locks of earlier versions still count while live; stale ones are removed
    (nobody creates them any more, so deleting one cannot race with its re-creation)."""
    live = []
    for obj in repo.list(PREFIX):
        if layout.is_legacy_lock_key(obj.key):
            holder = read_holder(repo, obj.key)
            if holder is None:
                continue
            if stale_reason(holder, time.time(), stale_after):
                repo.delete(obj.key)
            else:
                live.append(holder)
    return live


def _locked(repo: Repository, holders: list[Holder]) -> RepositoryLocked:
    now = time.time()
    return RepositoryLocked(f"{repo.url} is locked by " + "; ".join(h.describe(now) for h in holders))


def break_lock(repo: Repository, stale: Holder, reason: str) -> bool:
    """Remove the stale lock ``stale`` if we win its break marker; False if another run is
    breaking it. The lock is deleted only while it still carries the stale nonce."""
    marker = layout.break_marker_key(stale.nonce)
    me = Holder.ours(f"breaking {stale.key}: {reason}")
    if not repo.put_if_absent(marker, me.encode()):
        other = read_holder(repo, marker)
        if other is not None and time.time() - float(other.created) > BREAK_STALE_AFTER:
            log.warning("removing the break marker %s of a breaker that died", marker)
            repo.delete(marker)
        return False
    try:
        current = read_holder(repo, stale.key)
        if current is not None and current.nonce == stale.nonce:
            log.warning("breaking the lock of %s: %s", stale.describe(), reason)
            repo.delete(stale.key)
    finally:
        repo.delete(marker)  # after the lock: a late breaker then finds another nonce, or none
    return True


def acquire(repo: Repository, purpose: str, *, stale_after: float = STALE_AFTER,
            contention: int = 20, record_flow_run: bool = True) -> Holder:
    """Take the repository's lock or raise RepositoryLocked naming the holder.

    ``record_flow_run=False`` for a taker whose flow run is already over (a state hook): its
    lock must not look stale because of that.
    """
    me = Holder.ours(purpose, record_flow_run)
    while True:
        if legacy := _live_legacy(repo, stale_after):
            raise _locked(repo, legacy)
        if repo.put_if_absent(LOCK_KEY, me.encode()):
            current = read_holder(repo, LOCK_KEY)  # a store that ignored the condition overwrote
            if current is None or current.nonce != me.nonce:
                raise _locked(repo, [current] if current else [])
            if legacy := _live_legacy(repo, stale_after):  # an earlier version wrote meanwhile
                release(repo, me)
                raise _locked(repo, legacy)
            return me
        current = read_holder(repo, LOCK_KEY)
        if current is not None and current.nonce == me.nonce:
            return me  # our create went through, the answer was lost and the retry said "exists"
        if current is not None:
            reason = stale_reason(current, time.time(), stale_after)
            if reason is None:
                raise _locked(repo, [current])
            if break_lock(repo, current, reason):
                continue
        contention -= 1  # released meanwhile, or another run is breaking it: try again
        if contention <= 0:
            raise _locked(repo, [current] if current else [])
        time.sleep(0.05 + secrets.randbelow(100) / 1000)


def refresh(repo: Repository, held: Holder) -> None:
    """Rewrite ``refreshed``; LockLost if the lock is gone or another run's."""
    current = read_holder(repo, held.key)
    if current is None or current.nonce != held.nonce:
        raise LockLost(f"the lock on {repo.url} was taken from us"
                       + (f" by {current.describe()}" if current else " (removed)"))
    now = time.time()
    repo.put_bytes(held.key, replace(held, refreshed=now).encode())
    held.refreshed = now


def release(repo: Repository, held: Holder) -> None:
    """Remove our lock, only if it is still ours."""
    current = read_holder(repo, held.key)
    if current is not None and current.nonce == held.nonce:
        repo.delete(held.key)


# -- holding it for a run ---------------------------------------------------------------------

@dataclass
class HeldLock:
    """A lock held by a run, refreshed by a thread. If refreshing fails for longer than the
    lock stays safe (or the lock is taken from us), the run is aborted: ``LockLost`` is raised
    in the thread that took the lock (delivered at its next Python instruction, e.g. when the
    task it waits for ends), again when the block exits, and by ``check()``."""

    holder: Holder
    url: str
    thread_id: int
    lost: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> str:
        return self.holder.key

    def check(self) -> None:
        """Raise LockLost if the lock was lost; call before an irreversible step."""
        if self.lost:
            raise LockLost(self.lost)

    def _abort(self, reason: str) -> None:
        self.lost = f"lock on {self.url} lost, run aborted: {reason}"
        log.error("%s", self.lost)
        message = self.lost
        # The interpreter raises a class (instantiated without arguments): one carrying the reason.
        exc = type("LockLost", (LockLost,), {"__init__": lambda e: LockLost.__init__(e, message)})
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id),
                                                   ctypes.py_object(exc))

    def refresh_loop(self, open_repo: Callable[[], Repository], every: float, retry: float,
                     give_up_after: float) -> None:
        """Refresh every ``every`` s; on failure retry every ``retry`` s until the last good
        refresh is ``give_up_after`` s old (past that, another run may take it as stale)."""
        wait = every
        while not self._stop.wait(wait):
            try:
                with open_repo() as repo:
                    refresh(repo, self.holder)
                wait = every
            except LockLost as exc:
                return self._abort(str(exc))
            except Exception as exc:
                idle = time.time() - self.holder.refreshed
                if idle + retry >= give_up_after:
                    return self._abort(f"refresh failing for {int(idle)}s: {exc}")
                log.warning("refreshing the lock on %s failed (%s); retrying in %ss", self.url, exc, retry)
                wait = retry


@contextmanager
def hold(open_repo: Callable[[], Repository], purpose: str, *, stale_after: float = STALE_AFTER,
         refresh_every: float = REFRESH_EVERY, refresh_retry: float = REFRESH_RETRY,
         record_flow_run: bool = True) -> Iterator[HeldLock]:
    """Hold the lock for the block: refreshed meanwhile, released at the end. A failed release
    is logged, never raised over the block's own error (the lock is then stale at once: its
    process or flow run has ended)."""
    with open_repo() as repo:
        held = HeldLock(acquire(repo, purpose, stale_after=stale_after,
                                record_flow_run=record_flow_run), repo.url, threading.get_ident())
    give_up = stale_after - min(refresh_every, stale_after / 3)
    thread = threading.Thread(target=held.refresh_loop, daemon=True, name="repository-lock-refresh",
                              args=(open_repo, refresh_every, refresh_retry, give_up))
    thread.start()
    ok = False
    try:
        yield held
        ok = True
    finally:
        held._stop.set()
        thread.join(timeout=60)
        # An abort injected after the block ended must not land in the release below.
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(held.thread_id), None)
        try:
            with open_repo() as repo:
                release(repo, held.holder)
        except Exception as exc:
            log.warning("releasing the lock on %s failed (%s); it is stale once this process "
                        "ends; the `unlock` flow removes it", held.url, exc)
    if ok:
        held.check()


@contextmanager
def repository_lock(stack: Stack, purpose: str, *, record_flow_run: bool = True) -> Iterator[HeldLock]:
    """Hold the stack repository's lock for the duration of the block, refreshing it meanwhile."""
    with hold(lambda: open_repository(stack), purpose, record_flow_run=record_flow_run) as held:
        yield held
