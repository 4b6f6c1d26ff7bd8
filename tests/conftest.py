"""Session fixtures for the real stack: every service starts once, on first use, and stops at the end.

Data is reset between tests, never processes. Unit tests (tests/unit) use none of these.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

from config import load_stack  # noqa: E402


def shard_index() -> int:
    """0, or the pytest-xdist worker's number: each worker runs its own stack."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def shard_net() -> str:
    """The loopback /24 of this session's stack: ``THB_TEST_NET`` (default 127.0.0), the third
    byte moved on by 10 per xdist worker, so that stacks never collide."""
    a, b, c = os.environ.get("THB_TEST_NET", "127.0.0").split(".")
    return f"{a}.{b}.{int(c) + 10 * shard_index()}"


@pytest.fixture(scope="session")
def real_stack(tmp_path_factory):
    from tests.stack.stack import Layout, RealStack

    layout = Layout(net=shard_net(), jmx_offset=int(os.environ.get("THB_TEST_JMX_OFFSET", "0"))
                    + 500 * shard_index())
    stack = RealStack(tmp_path_factory.mktemp("stack"), layout)
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def cluster3(real_stack):
    return real_stack.cassandra3


@pytest.fixture(scope="session")
def seeded3(real_stack, cluster3):
    """The 3-node cluster, Elasticsearch and the attachments folder seeded once; put back as they
    were before each test that uses them (``_data_reset``)."""
    from tests.stack.stack import SEED3

    written = real_stack.seed(cluster3, **SEED3)
    real_stack.seeded3_state = real_stack.seeded_state(cluster3)
    return written


@pytest.fixture(autouse=True)
def _data_reset(request):
    """Data is reset between tests, never processes: a test that uses the seeded 3-node data gets
    it exactly as seeded (restores, drops and re-indexing by earlier tests put back; cheap when
    unchanged), and no snapshot outlives the test that left it."""
    if "real_stack" not in request.fixturenames:
        yield
        return
    real_stack = request.getfixturevalue("real_stack")
    log = logging.getLogger(__name__)
    if "seeded3" in request.fixturenames:
        from tests.stack.stack import SEED3

        request.getfixturevalue("seeded3")
        redone = real_stack.put_back_seed(real_stack.cassandra3, real_stack.seeded3_state, **SEED3)
        if redone:
            log.info("seeded data put back: %s", ", ".join(redone))
    yield
    cleared = real_stack.clear_snapshots()
    if cleared:
        log.info("snapshots cleared after the test on %s", ", ".join(cleared))


@pytest.fixture(scope="session")
def thehive(real_stack, cluster3, seeded3):
    """The TheHive stand-in (not TheHive) on the 3-node cluster; stopped again if we started it."""
    service = real_stack.standin(cluster3)
    was_running = service.running()
    if not was_running:
        real_stack.start_standin(cluster3)
    yield service
    if not was_running:
        service.stop()


@pytest.fixture(scope="session")
def backed_up(real_stack, cluster3, seeded3, thehive, prefect_server, tmp_path_factory):
    """One cold backup of the running stack (tests/stack/cold.py's folders), shared by the cold
    tests of the session; ``before`` holds the fingerprints it was taken from."""
    from flows.cold_backup import cold_backup
    from tests.stack.cold import cold_stack, ensure_running, fingerprints, unhealthy

    path, stack = cold_stack(real_stack, cluster3, tmp_path_factory.mktemp("cold"))
    assert unhealthy(stack) == {}
    before = fingerprints(real_stack, cluster3)
    t0 = time.monotonic()
    try:
        result = cold_backup(stack=str(path), label="cold test")
    finally:
        ensure_running(stack)
    return SimpleNamespace(path=path, stack=stack, result=result, before=before,
                           seconds=time.monotonic() - t0)


@pytest.fixture(scope="session")
def standin3(thehive):
    """The TheHive stand-in on the 3-node cluster, running (tests that stop it start it again)."""
    return thehive


@pytest.fixture(scope="session")
def backup3(real_stack, cluster3, seeded3, standin3, prefect_server, tmp_path_factory):
    """One hot backup of the seeded 3-node stack, shared by the restore suites (read-only)."""
    from flows.hot_backup import hot_backup
    from tests.stack import seed

    repo = real_stack.repository("local", "restore-source")
    data = real_stack.stack_data(cluster3, repo)
    path = real_stack.write_stack_file(tmp_path_factory.mktemp("b3") / "stack.yaml", data)
    result = hot_backup(stack=str(path))
    return {"repo": repo, "id": result["backup_id"], "stack_file": path,
            "rows": seed.cluster_fingerprint(cluster3),
            "index": seed.index_fingerprint(real_stack.elasticsearch.client()),
            "files": seed.files_fingerprint(real_stack.files_dir)}


def _stack_maker(real_stack, folder: Path):
    def make(repo: str | dict = "local", cluster=None, **kwargs):
        """``repo``: a kind for a fresh repository, or the settings of an existing one."""
        cluster = cluster or real_stack.cassandra3
        repository = repo if isinstance(repo, dict) else real_stack.repository(repo, f"r{uuid.uuid4().hex[:10]}")
        data = real_stack.stack_data(cluster, repository, **kwargs)
        path = real_stack.write_stack_file(folder / f"stack-{uuid.uuid4().hex[:6]}.yaml", data)
        return path, load_stack(path)

    return make


@pytest.fixture
def make_stack(real_stack, tmp_path):
    """Write a stack file for the harness: ``make_stack(repo="local", cluster=None, **kw)``."""
    return _stack_maker(real_stack, tmp_path)


#: The longest files first (`make test` runs whole files per worker, handed out in collection
#: order): a long file handed out last would leave one worker running alone at the end.
LONGEST_FIRST = ["test_disaster_recovery.py", "test_restore.py", "test_encryption.py",
                 "faults/test_reference_guide.py", "faults/test_restore_faults.py", "test_worker.py",
                 "test_least_privilege.py", "test_incremental.py", "test_node_rebuild.py", "test_cold.py",
                 "test_cli.py", "faults/test_cold_faults.py", "faults/test_backup_kill.py",
                 "test_hot_backup.py", "test_es_repository.py", "test_ui_browser.py"]


def pytest_collection_modifyitems(items):
    """Everything outside tests/unit needs the real stack; the longest files run first."""
    here = Path(__file__).parent
    unit = here / "unit"
    rank = {str(here / name): i for i, name in enumerate(LONGEST_FIRST)}

    def order(item) -> tuple[int, int]:
        path = Path(item.fspath)
        return (2 if unit in path.parents else 1) if str(path) not in rank else 0, rank.get(str(path), 0)

    for item in items:
        if unit not in Path(item.fspath).parents:
            item.add_marker(pytest.mark.stack)
    items.sort(key=order)  # stable: the order within a file and among the rest is kept


@pytest.fixture(scope="session")
def seeded1(real_stack):
    """The single-node cluster with a keyspace big enough that a table archive streams for a
    while (fast-seeded, ~60 MiB of rows), and an Elasticsearch index matching the stack's
    patterns (built from it only if none exists: another test's index is left as it is)."""
    from tests.stack import fastseed, seed

    cluster = real_stack.cassandra1
    counts = fastseed.fast_seed(cluster, "thehive", size_mb=60, seed=1)
    es = real_stack.elasticsearch.client()
    if not es.indices.get(index=seed.INDEX_PATTERN, allow_no_indices=True, ignore_unavailable=True):
        session = cluster.session()
        try:
            seed.build_index(es, session, "thehive")
        finally:
            session.cluster.shutdown()
    return {"cluster": cluster, "rows": counts}


@pytest.fixture(scope="session")
def session_stack(real_stack, tmp_path_factory):
    """``make_stack`` for module- and session-scoped fixtures (files under a session folder)."""
    return _stack_maker(real_stack, tmp_path_factory.mktemp("stacks"))


@pytest.fixture(scope="session")
def deployed(prefect_server) -> str:
    """prefect.yaml deployed on the session's Prefect server as an operator does it (the work
    pool, then ``prefect deploy --all``); the API URL."""
    from prefect.settings import PREFECT_API_URL

    from tests.stack import prefect_ops

    api = PREFECT_API_URL.value()
    prefect_ops.deploy_all(api)
    return api


@pytest.fixture(scope="session")
def process_worker(deployed, real_stack, tmp_path_factory):
    """A real ``prefect worker start`` for the pool, in the background, without the harness's
    password variables: flows it runs read secrets from Prefect Secret blocks."""
    from tests.stack import prefect_ops

    lay = real_stack.layout
    service = prefect_ops.worker_service(tmp_path_factory.mktemp("worker"), deployed)
    prefect_ops.start_worker(service, deployed,
                             drop_env=(lay.password_env, lay.s3_key_env, lay.s3_secret_env))
    yield service
    service.stop()
