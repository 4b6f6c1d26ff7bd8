"""The local sandbox: the real stack on 127.0.1.x under ``.sandbox/``, left running for demos.

``python -m tests.stack.sandbox up`` starts sshd, a 3-node Cassandra 4.1 cluster with
PasswordAuthenticator, Elasticsearch, the TheHive stand-in, seeds TheHive-like data once and writes
``.sandbox/stack.yaml`` (pass it as ``stack=``, or name it in ``THEHIVE_BACKUP_STACK``) and
``.sandbox/secrets.env`` (the
Cassandra password, read by the flows through ``{env: ...}``). ``down`` stops every process.
Services run detached, so the sandbox outlives the command that started it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.stack.stack import Layout, RealStack

ROOT = Path(__file__).resolve().parents[2] / ".sandbox"
SANDBOX_STACK = ROOT / "stack.yaml"
SECRETS = ROOT / "secrets.env"
LAYOUT = Layout(net="127.0.1", jmx_offset=10000, password_env="THB_SANDBOX_CASSANDRA_PASSWORD")
SEEDED = ROOT / ".seeded"


def load_secrets() -> None:
    """Put the sandbox's secrets into this process's environment (as an operator's env file)."""
    if SECRETS.exists():
        for line in SECRETS.read_text().splitlines():
            key, _, value = line.partition("=")
            os.environ.setdefault(key, value)


def up(size_mb: float = 20) -> Path:
    ROOT.mkdir(exist_ok=True)
    load_secrets()
    stack = RealStack(ROOT, LAYOUT, password=os.environ.get(LAYOUT.password_env))
    cluster = stack.cassandra3
    _ = stack.elasticsearch.url  # started on first use
    if not SEEDED.exists():
        written = stack.seed(cluster, size_mb=size_mb, files=50, file_kb=64)
        SEEDED.write_text(f"{sum(written['rows'].values())} rows, {written['docs']} docs, "
                          f"{len(written['files'])} files\n")
    stack.start_standin(cluster)
    data = stack.stack_data(cluster, {"kind": "local", "path": str(ROOT / "backups")},
                            name="sandbox")
    stack.write_stack_file(SANDBOX_STACK, data)
    SECRETS.write_text(f"{LAYOUT.password_env}={cluster.password}\n")
    SECRETS.chmod(0o600)
    return SANDBOX_STACK


def scripts(action: str) -> list[Path]:
    return sorted(ROOT.glob(f"**/bin/{action}"))


def down() -> None:
    for stop in scripts("stop"):
        subprocess.run([str(stop)], check=False, timeout=180)


def status() -> dict[str, bool]:
    return {str(s.parent.parent.relative_to(ROOT)): subprocess.run([str(s)]).returncode == 0
            for s in scripts("status")}


def main(argv: list[str]) -> int:
    action = argv[0] if argv else "status"
    if action == "up":
        path = up()
        print(f"sandbox up; stack file: {path}")
    elif action == "down":
        down()
        print("sandbox stopped")
    elif action != "status":
        print("usage: python -m tests.stack.sandbox up|down|status", file=sys.stderr)
        return 2
    for name, running in status().items():
        print(f"  {'running' if running else 'stopped':8} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
