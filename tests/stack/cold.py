"""Helpers of the cold backup / cold restore tests on the real stack (tests/test_cold.py,
tests/faults/test_cold_faults.py): the stack file with the folders a cold backup copies, the
fingerprints compared before and after, and the safety net that keeps the session's services up."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from config import load_stack
from flows import lifecycle
from tasks import services
from tests.stack import seed

SERVICES = ("cassandra", "elasticsearch", "thehive")


def cold_stack(real_stack, cluster, folder: Path, repository: dict | None = None,
               hooks: dict | None = None):
    """The harness's stack file plus the folders a cold backup copies (``{node}`` = node name)."""
    repository = repository or real_stack.repository("local", f"r{uuid.uuid4().hex[:10]}")
    data = real_stack.stack_data(cluster, repository)
    first = cluster.nodes[0]
    per_node = lambda p: str(p).replace(first.name, "{node}")  # noqa: E731
    paths = {
        "cassandra": [{"name": "data", "path": per_node(first.data_dir)},
                      {"name": "commitlog", "path": per_node(first.commitlog_dir)}],
        "elasticsearch": [{"name": "data", "path": str(real_stack.elasticsearch.service.dir / "data")}],
        "thehive": [{"name": "attachments", "path": str(real_stack.files_dir)}],
    }
    for svc in data["services"]:
        svc["paths"] = paths[svc["name"]]
        svc["stop_timeout"], svc["start_timeout"] = 180, 400
    if hooks:
        data["hooks"] = hooks
    path = real_stack.write_stack_file(folder / f"stack-cold-{uuid.uuid4().hex[:6]}.yaml", data)
    return path, load_stack(path)


def fingerprints(real_stack, cluster) -> dict:
    session = cluster.session()
    try:
        rows = seed.keyspace_fingerprint(session, "thehive")
    finally:
        session.cluster.shutdown()
    es = real_stack.elasticsearch.client()
    try:
        docs = seed.index_fingerprint(es)
    finally:
        es.close()
    return {"rows": rows, "docs": docs, "files": seed.files_fingerprint(real_stack.files_dir)}


def unhealthy(stack) -> dict:
    return {s: p for s in SERVICES if (p := services.check_healthy(stack, s)) is not None}


def ensure_running(stack) -> None:
    """Safety net for a failed test: the session's services must stay up for the other modules."""
    if unhealthy(stack):
        lifecycle.start_all(stack)


def clear(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
