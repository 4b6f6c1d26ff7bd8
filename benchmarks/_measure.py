"""Wall time, CPU seconds and peak RSS of one measured step (benchmarks/compare.py).

CPU seconds of a step are the sum of three deltas taken around it:
- this process and every child it has waited for (``RUSAGE_SELF`` + ``RUSAGE_CHILDREN``): the flow
  process of our backups and restores, local ``ssh``/``scp``/``tar`` clients, Medusa, nodetool
  JVMs started here;
- the harness's sshd master (``/proc/<pid>/stat`` utime+stime+cutime+cstime): what runs on a node
  through SSH (``tar``, ``zstd``, nodetool JVMs of the flow) is added to it when the session ends;
- each Cassandra JVM (same fields): snapshots, imports, and whatever else the node does meanwhile
  (compaction, GC), which is the node-side cost of the step.

Peak RSS is that of one child process (``os.wait4``'s rusage of that child alone, see ``_LAUNCHER``), in MiB.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` in seconds (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / _TICK  # fields 14-17 of proc(5)


def pid_of(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def own_cpu() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


@dataclass
class Step:
    """Figures of one measured step; ``seconds`` may be narrowed to the flow call (``flow_seconds``)."""

    wall: float = 0.0
    cpu: float = 0.0
    peak_rss_mib: float = 0.0
    extra: dict = field(default_factory=dict)


class Meter:
    """CPU of this process tree, the sshd master and the Cassandra JVMs, around a step."""

    def __init__(self, pid_files: list[Path]):
        self.pid_files = pid_files

    def _outside(self) -> float:
        return sum(proc_cpu(p) for f in self.pid_files if (p := pid_of(f)) is not None)

    @contextmanager
    def step(self):
        s = Step()
        c0, o0, t0 = own_cpu(), self._outside(), time.monotonic()
        try:
            yield s
        finally:
            s.wall = time.monotonic() - t0
            s.cpu = own_cpu() - c0 + self._outside() - o0


#: Runs argv in a grandchild and writes that grandchild's own peak RSS: a child forked from this
#: (large) process would report at least this process's RSS (Linux keeps the pre-exec high-water
#: mark), a child of this small launcher only the launcher's few MiB.
_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(ru.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(argv: list[str], step: Step | None = None, *, stdin=None, stdout=None,
              env: dict | None = None) -> tuple[int, str]:
    """Run ``argv`` (through ``_LAUNCHER``) and keep its own peak RSS in ``step``.

    Returns (exit code, stderr text). stdout goes to ``stdout`` (a file) or is discarded. Its CPU
    reaches this process's ``RUSAGE_CHILDREN`` when it ends. On Ctrl-C its process group is killed.
    """
    fd, rss_file = tempfile.mkstemp(prefix="rss.")
    os.close(fd)
    proc = subprocess.Popen(["python3", "-S", "-c", _LAUNCHER, rss_file, *argv],
                            stdin=stdin if stdin is not None else subprocess.DEVNULL,
                            stdout=stdout if stdout is not None else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        _, err = proc.communicate()
        text = Path(rss_file).read_text().strip()
    except BaseException:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        Path(rss_file).unlink(missing_ok=True)
    if step is not None and text:
        step.peak_rss_mib = max(step.peak_rss_mib, int(text) / 1024)
    return proc.returncode, err.decode(errors="replace")
