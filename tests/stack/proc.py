"""Background services for the real test stack, driven by plain start/stop/status scripts.

Every service of the stack (Cassandra node, Elasticsearch, sshd, S3 server, TheHive stand-in) gets
three executable scripts in ``<dir>/bin``: ``start`` (launches it detached, writes ``<dir>/pid``),
``stop`` (TERM, waits until the process is gone, KILL after a grace period) and ``status`` (exit 0
while running). The pytest fixtures, the sandbox and the ``command`` service manager of a stack file
all use the very same scripts, so cold backup drives real processes exactly as the harness does.
"""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_START = """#!/bin/sh
# start {name}: detached, pid in {pid}
set -e
if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then echo "{name} already running"; exit 0; fi
mkdir -p {logdir}
cd {cwd}
{env} setsid {runas}{argv} >>{log} 2>&1 </dev/null &
echo $! > {pid}
"""

# A zombie still answers kill -0; it is gone for our purposes.
#: C1 only: test nodes start often and hold little data, so the C2 compiler's CPU at each start
#: costs more than it saves on two shared cores. THB_FULL_JIT=1 (benchmarks) keeps the default.
QUICK_JIT = [] if os.environ.get("THB_FULL_JIT") else ["-XX:TieredStopAtLevel=1"]

_ALIVE = ("""alive() {{ kill -0 "$1" 2>/dev/null && """
          """[ "$(sed 's/.*) //' /proc/$1/stat 2>/dev/null | cut -c1)" != Z ]; }}""")

_STOP = """#!/bin/sh
# stop {name}: TERM, wait up to {grace}s, then KILL; exit 0 once the process is gone
""" + _ALIVE + """
[ -f {pid} ] || exit 0
p=$(cat {pid})
kill -TERM "$p" 2>/dev/null || {{ rm -f {pid}; exit 0; }}
i=0
while alive "$p"; do
  i=$((i+1)); [ $i -gt {grace_ticks} ] && kill -KILL "$p" 2>/dev/null
  sleep 0.1
done
rm -f {pid}
"""

_STATUS = """#!/bin/sh
# status {name}: exit 0 while running
""" + _ALIVE + """
[ -f {pid} ] && alive "$(cat {pid})"
"""


@dataclass(frozen=True)
class Service:
    """A background process with its scripts; ``dir/bin/{start,stop,status}``."""

    name: str
    dir: Path

    @property
    def start_script(self) -> Path:
        return self.dir / "bin" / "start"

    @property
    def stop_script(self) -> Path:
        return self.dir / "bin" / "stop"

    @property
    def status_script(self) -> Path:
        return self.dir / "bin" / "status"

    @property
    def log(self) -> Path:
        return self.dir / "logs" / f"{self.name}.out"

    def start(self) -> None:
        subprocess.run([str(self.start_script)], check=True, timeout=60)

    def stop(self) -> None:
        subprocess.run([str(self.stop_script)], check=True, timeout=120)

    def running(self) -> bool:
        return subprocess.run([str(self.status_script)], timeout=30).returncode == 0

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def write_service(
    dir: Path,
    name: str,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    run_as: str | None = None,
    cwd: Path | None = None,
    grace_seconds: int = 60,
) -> Service:
    """Write start/stop/status scripts for ``argv`` under ``dir/bin`` and return the Service."""
    bin_dir = dir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (dir / "logs").mkdir(parents=True, exist_ok=True)
    svc = Service(name, dir)
    q = shlex.quote
    fields = dict(
        name=name,
        pid=q(str(dir / "pid")),
        log=q(str(svc.log)),
        logdir=q(str(dir / "logs")),
        cwd=q(str(cwd or dir)),
        env=("env " + " ".join(f"{k}={q(v)}" for k, v in env.items())) if env else "",
        runas=f"runuser -u {q(run_as)} -- " if run_as else "",
        argv=shlex.join(argv),
        grace=grace_seconds,
        grace_ticks=grace_seconds * 10,
    )
    for script, template in ((svc.start_script, _START), (svc.stop_script, _STOP),
                             (svc.status_script, _STATUS)):
        script.write_text(template.format(**fields))
        script.chmod(0o755)
    return svc


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check, what: str, timeout: float, service: Service | None = None,
               interval: float = 0.5) -> None:
    """Poll ``check()`` until true; on timeout raise with the service's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if service is not None and not service.running():
            raise RuntimeError(f"{service.name} exited while waiting for {what}:\n{service.log_tail()}")
        time.sleep(interval)
    tail = f"\n{service.log_tail()}" if service else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


def cache_dir() -> Path:
    """Downloaded artifacts live outside the clone, keyed by version."""
    root = Path(os.environ.get("THEHIVE_BACKUP_CACHE", Path.home() / ".cache" / "thehive-backup"))
    root.mkdir(parents=True, exist_ok=True)
    return root
