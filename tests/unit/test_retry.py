"""The retry policy (tasks/retry.py): one classification, and the table of which layer retries what."""
from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import botocore.exceptions
import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import ApiError
from elasticsearch import ConnectionError as EsConnectionError
from prefect import Task
from prefect.cache_policies import NO_CACHE

import tasks
from config.model import Elasticsearch as EsSettings
from config.model import S3Settings
from tasks import elasticsearch as es_mod
from tasks.hosts import AuthenticationFailed, CommandFailed, CommandTimeout, HostKeyRejected, HostUnreachable
from tasks.repositories import ObjectNotFound, RepositoryError, RetriesExhausted, TransientRepositoryError
from tasks.repositories.factory import RetryingRepository
from tasks.repositories.local import LocalRepository
from tasks.repositories.s3 import S3Repository, _is_transient, s3_client
from tasks.retry import RETRY_DELAYS, RETRYING, is_transient, retry_transient
from tasks.services import ServiceError, ServiceTimeout
from tasks.staging import StagingError


def _api_error(status: int, text: str = "boom") -> ApiError:
    meta = ApiResponseMeta(status=status, http_version="1.1", headers=HttpHeaders(), duration=0.0,
                           node=NodeConfig("http", "127.0.0.1", 9200))
    return ApiError(text, meta=meta, body={})


def _client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


# -- one classification: the ``transient`` attribute --------------------------------------------

@pytest.mark.parametrize("exc", [
    HostUnreachable("reset"), CommandTimeout("silent"), TransientRepositoryError("503"),
    es_mod.TransientElasticsearchError("429"), ConnectionResetError(),
    TimeoutError(), EOFError(),
])
def test_transient_faults_are_retried(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    None, CommandFailed("n1", ["nodetool", "snapshot"], 2, b"error: Keyspace x does not exist"),
    HostKeyRejected("unknown key"), AuthenticationFailed("denied"), RepositoryError("403"),
    ObjectNotFound("gone"), RetriesExhausted("503 (after 4 attempts)"),
    es_mod.ElasticsearchError("snapshot ended PARTIAL"), ServiceError("x"), ServiceTimeout("x"),
    StagingError("x"), ValueError("bad tag"), OSError("EIO"), BrokenPipeError(),
])
def test_definite_errors_fail_at_once(exc):
    assert not is_transient(exc)


def test_the_flag_wins_over_the_type():
    class Gave(ConnectionResetError):
        transient = False

    assert not is_transient(Gave())


def test_retry_condition_reads_the_failed_states_exception():
    class State:
        def __init__(self, data):
            self.data = data

    assert retry_transient(None, None, State(HostUnreachable("x")))
    assert not retry_transient(None, None, State(CommandFailed("n", ["x"], 1, b"")))
    assert not retry_transient(None, None, State("not an exception"))


def test_retry_module_needs_no_backend_library():
    """Classification is an attribute, so tasks/retry.py imports neither botocore nor paramiko."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys, tasks.retry; "
         "print(sorted(m for m in ('botocore', 'paramiko', 'elasticsearch') if m in sys.modules))"],
        capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_elasticsearch_error_classified_twice_keeps_its_flag():
    again = es_mod.classify(es_mod.classify(_api_error(503)))
    assert isinstance(again, es_mod.TransientElasticsearchError) and is_transient(again)


@pytest.mark.parametrize("exc, transient", [
    (EsConnectionError("refused"), True), (_api_error(429), True), (_api_error(503), True),
    (_api_error(400, "invalid_snapshot_name_exception"), False), (_api_error(404), False),
    (_api_error(401), False),
])
def test_elasticsearch_errors_are_classified_once(exc, transient):
    classified = es_mod.classify(exc)
    assert isinstance(classified, es_mod.ElasticsearchError) and is_transient(classified) is transient


@pytest.mark.parametrize("exc, transient", [
    (_client_error(503, "ServiceUnavailable"), True), (_client_error(500, "InternalError"), True),
    (_client_error(503, "SlowDown"), True), (_client_error(403, "AccessDenied"), False),
    (_client_error(400, "InvalidArgument"), False),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
    (botocore.exceptions.ResponseStreamingError(error="reset"), True),
    (botocore.exceptions.NoCredentialsError(), False),
])
def test_s3_errors_become_repository_errors_with_the_flag(exc, transient):
    assert _is_transient(exc) is transient
    repo = S3Repository.__new__(S3Repository)
    repo.url = "s3://b/"
    assert is_transient(repo._error("reading k from", exc)) is transient


# -- the table ---------------------------------------------------------------------------------

class Flaky(LocalRepository):
    """A real local repository whose reads fail with a given error the first ``failures`` times."""

    def __init__(self, root, failures: int, error: RepositoryError):
        super().__init__(root)
        self.failures, self.error, self.calls = failures, error, 0

    def stat(self, key):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return super().stat(key)

    def put(self, key, chunks):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return super().put(key, chunks)


def test_repository_calls_are_retried_by_the_wrapper_then_become_definite(tmp_path):
    inner = Flaky(tmp_path, failures=0, error=TransientRepositoryError("503"))
    inner.put_bytes("a/b", b"x")
    inner.calls, inner.failures = 0, 3
    assert RetryingRepository(inner, backoff=0).stat("a/b").size == 1 and inner.calls == 4

    inner.calls, inner.failures = 0, 99
    with pytest.raises(RetriesExhausted, match="after 4 attempts") as err:
        RetryingRepository(inner, backoff=0).stat("a/b")
    assert inner.calls == 4 and not is_transient(err.value)  # so no task retries it again


def test_definite_repository_errors_are_not_retried(tmp_path):
    inner = Flaky(tmp_path, failures=99, error=RepositoryError("403 AccessDenied"))
    with pytest.raises(RepositoryError, match="AccessDenied"):
        RetryingRepository(inner, backoff=0).stat("a/b")
    assert inner.calls == 1


def test_put_is_left_to_the_task(tmp_path):
    """A stream is one-shot: the wrapper tries ``put`` once and the error stays transient."""
    inner = Flaky(tmp_path, failures=1, error=TransientRepositoryError("reset"))
    with pytest.raises(TransientRepositoryError) as err:
        RetryingRepository(inner, backoff=0).put("a/b", iter([b"x"]))
    assert inner.calls == 1 and is_transient(err.value)


def test_bytes_are_retried_by_the_wrapper(tmp_path):
    """Unlike a stream, bytes can be sent again: the manifest and started.json are retried."""
    inner = Flaky(tmp_path, failures=2, error=TransientRepositoryError("reset"))
    RetryingRepository(inner, backoff=0).put_bytes("a/b", b"xy")
    assert inner.calls == 3 and inner.get_bytes("a/b") == b"xy"


def test_boto3_makes_one_attempt(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    client = s3_client(S3Settings(bucket="b", endpoint_url="http://127.0.0.1:9"))
    assert client.meta.config.retries == {"total_max_attempts": 1, "mode": "standard"}


def test_one_s3_read_is_tried_four_times_in_all(monkeypatch):
    """boto3 × RetryingRepository against a closed loopback port: 4 HTTP attempts, not 24."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    inner = S3Repository(S3Settings(bucket="b", endpoint_url="http://127.0.0.1:9"))
    sends = []
    inner.client.meta.events.register("before-send.s3.*", lambda **kw: sends.append(1))
    with pytest.raises(RetriesExhausted):
        RetryingRepository(inner, backoff=0).stat("a/b")
    assert len(sends) == 4


def test_elasticsearch_client_does_not_retry():
    es = es_mod.es_client(EsSettings(url="http://127.0.0.1:9"))
    try:
        assert es._max_retries == 0 and es._retry_on_timeout is False
    finally:
        es.close()


def _tasks() -> dict[str, Task]:
    found = {}
    for info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Task) and value.__module__ == module.__name__:
                found[value.name] = value
    return found


#: Steps that change a system but are not safe to repeat after a lost answer: never retried.
NOT_RETRIED = {
    "recreate keyspace", "create loader role", "load table", "put back previous keyspace",
    "extract folder", "put folder back", "preflight", "hook", "wait healthy",
}
#: Idempotent steps: retried by the task, the one layer for commands and Elasticsearch.
RETRIED = {
    "nodetool snapshot", "nodetool clearsnapshot", "archive table", "capture schema and topology",
    "elasticsearch snapshot into the repository", "elasticsearch restore", "keep previous index",
    "attachments backup",
    "attachments restore", "stage table", "snapshot before restore", "drop loader role",
    "stop service", "start service",
}


def test_every_task_is_uncached_and_retried_only_when_idempotent():
    found = _tasks()
    assert RETRIED | NOT_RETRIED <= set(found)
    assert {n for n, t in found.items() if t.cache_policy is not NO_CACHE} == set()
    for name in RETRIED:
        t = found[name]
        assert (t.retries, t.retry_delay_seconds, t.retry_condition_fn) == (
            len(RETRY_DELAYS), RETRY_DELAYS, RETRYING["retry_condition_fn"]), name
    assert {n for n in NOT_RETRIED if found[n].retries} == set()


# -- nodetool snapshot, safe to retry (the folder logic; tests/test_snapshot_idempotence.py runs it
#    against real Cassandra) ---------------------------------------------------------------------

def _table(data_dir, name: str, *, data: bool = True, snapshot: str | None = None,
           finished: bool = True):
    """A table folder as Cassandra lays it out: live SSTables, and a snapshot folder whose
    manifest.json Cassandra writes last."""
    table = data_dir / "thehive" / f"{name}-0123abcd"
    table.mkdir(parents=True)
    if data:
        (table / "nb-1-big-Data.db").write_bytes(b"x")
    if snapshot:
        snap = table / "snapshots" / snapshot
        snap.mkdir(parents=True)
        (snap / "nb-1-big-Data.db").write_bytes(b"x")
        if finished:
            (snap / "manifest.json").write_text("{}")
    return table


def test_a_finished_snapshot_with_our_tag_is_done_without_nodetool(tmp_path):
    from config.model import CassandraNodeSettings
    from tasks.cassandra import take_snapshot_once, unfinished_tables
    from tasks.hosts import LocalHost

    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    _table(d1, "edgestore", snapshot="hot-x")
    _table(d2, "edgestore", snapshot="hot-x")
    _table(d1, "graphindex", data=False, snapshot="hot-x")  # empty table: a folder all the same
    settings = CassandraNodeSettings(nodetool=["false"], data_dirs=[str(d1), str(d2)])
    host = LocalHost()
    assert unfinished_tables(host, settings, "hot-x", "thehive") == set()
    assert take_snapshot_once(host, settings, "hot-x", ["thehive"]) == []  # `false` never ran
    with pytest.raises(CommandFailed):  # no snapshot with that tag: nodetool is called
        take_snapshot_once(host, settings, "hot-y", ["thehive"])


def test_a_snapshot_still_being_made_is_waited_for_then_refused(tmp_path):
    import threading

    from config.model import CassandraNodeSettings
    from tasks.cassandra import CassandraError, take_snapshot_once, unfinished_tables
    from tasks.hosts import LocalHost

    d1 = tmp_path / "d1"
    _table(d1, "edgestore", snapshot="hot-x")
    late = _table(d1, "graphindex", snapshot="hot-x", finished=False)
    missing = _table(d1, "txlog")  # data, and no snapshot folder yet
    settings = CassandraNodeSettings(nodetool=["false"], data_dirs=[str(d1)])
    host = LocalHost()
    assert unfinished_tables(host, settings, "hot-x", "thehive") == {str(late), str(missing)}
    with pytest.raises(CassandraError, match=r"lacks 2 table\(s\) \(graphindex-0123abcd, txlog"):
        take_snapshot_once(host, settings, "hot-x", ["thehive"], wait=0.3, poll=0.1)

    def finish():
        (late / "snapshots" / "hot-x" / "manifest.json").write_text("{}")
        (missing / "snapshots" / "hot-x").mkdir(parents=True)
        (missing / "snapshots" / "hot-x" / "manifest.json").write_text("{}")

    timer = threading.Timer(0.5, finish)
    timer.start()
    try:
        assert take_snapshot_once(host, settings, "hot-x", ["thehive"], wait=10, poll=0.1) == []
    finally:
        timer.join()
