"""Elasticsearch operations: health, snapshot repository, snapshots of TheHive's indices.

Indices are chosen by pattern (``thehive_global*``), never by one hard-coded name, so the index
TheHive renamed after a rebuild (``thehive_global1``) is still saved. A snapshot counts as done only
when Elasticsearch reports it SUCCESS with no failed shard — not when it was merely accepted.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from elasticsearch import (
    ApiError,
    ConnectionError,
    ConnectionTimeout,
    Elasticsearch,
    NotFoundError,
    TransportError,
)

from config.model import Elasticsearch as EsSettings
from tasks.manifest import ElasticsearchRecord, IndexRecord
from tasks.retry import side_effect_task

#: Written into every snapshot this tool takes; how a retry recognises its own snapshot.
TAKEN_BY = {"taken_by": "thehive-backup"}


class ElasticsearchError(Exception):
    transient = False


class TransientElasticsearchError(ElasticsearchError):
    transient = True


def es_client(settings: EsSettings) -> Elasticsearch:
    """A client that does not retry: the task around an idempotent step is the one retry layer
    (tasks/retry.py); with one URL the client's own retries would reach the same node at once."""
    auth = None
    if settings.username is not None and settings.password is not None:
        auth = (settings.username, settings.password.resolve().get_secret_value())
    tls: dict[str, Any] = {"ca_certs": settings.ca_certs} if settings.ca_certs else {}
    return Elasticsearch(settings.url, basic_auth=auth, verify_certs=settings.verify_certs,
                         request_timeout=settings.request_timeout, retry_on_timeout=False,
                         max_retries=0, **tls)


@contextmanager
def es_session(settings: EsSettings) -> Iterator[Elasticsearch]:
    """A client for one step, closed after it; the client's errors leave classified
    (``transient`` on 429/5xx and connection faults)."""
    es = es_client(settings)
    try:
        yield es
    except (ApiError, TransportError) as exc:
        raise classify(exc) from exc
    finally:
        es.close()


def classify(exc: Exception) -> ElasticsearchError:
    """429/5xx and connection faults are transient; everything else is a definite error."""
    if isinstance(exc, ElasticsearchError):  # classified already: keep its flag
        return type(exc)(*exc.args)
    if isinstance(exc, (ConnectionError, ConnectionTimeout)):
        return TransientElasticsearchError(f"Elasticsearch unreachable: {exc}")
    if isinstance(exc, ApiError) and (exc.meta.status == 429 or exc.meta.status >= 500):
        return TransientElasticsearchError(f"Elasticsearch {exc.meta.status}: {exc}")
    return ElasticsearchError(str(exc))


def health(es: Elasticsearch) -> str:
    try:
        return es.cluster.health(timeout="10s")["status"]
    except Exception as exc:
        raise classify(exc) from exc


def server_version(es: Elasticsearch) -> str:
    """From the nodes API (``GET /`` is not served by every distribution)."""
    nodes = es.nodes.info(node_id="_local", metric="process")["nodes"]
    return next(iter(nodes.values()))["version"]


def ensure_repository(es: Elasticsearch, name: str, type_: str, settings: dict) -> None:
    """Register the snapshot repository if it is missing, then have every node verify it.

    A registration whose cached state no longer matches the repository's contents (for example
    Elasticsearch's data folder put back by a cold restore while snapshots were taken since: ES
    then refuses every snapshot with "could not read repository data" and disables the
    repository) is registered again, Elasticsearch's own remedy; snapshots are not touched.
    """
    def register() -> None:
        es.snapshot.create_repository(name=name, repository={"type": type_, "settings": settings},
                                      verify=False)

    try:
        try:
            es.snapshot.get_repository(name=name)
        except NotFoundError:
            register()
        try:
            es.snapshot.get(repository=name, snapshot="_all", verbose=False)
        except ApiError as exc:
            if exc.meta.status != 500 or "repository_exception" not in str(exc):
                raise
            es.snapshot.delete_repository(name=name)
            register()
        es.snapshot.verify_repository(name=name)
    except Exception as exc:
        raise classify(exc) from exc


def matching_indices(es: Elasticsearch, patterns: list[str]) -> list[str]:
    """Open indices matching the patterns; an empty match is an error, not an empty snapshot."""
    try:
        found = es.indices.get(index=",".join(patterns), expand_wildcards="open",
                               ignore_unavailable=True, allow_no_indices=True)
    except Exception as exc:
        raise classify(exc) from exc
    if not found:
        raise ElasticsearchError(f"no index matches {', '.join(patterns)}")
    return sorted(found)


def _exists_already(exc: ApiError) -> bool:
    """ES's answer to a create under a name in use (done, or still running)."""
    # 8.x says snapshot_name_already_in_use_exception for a finished one, and
    # invalid_snapshot_name_exception ("already exists") while it still runs
    return exc.meta.status == 400 and any(
        t in str(exc) for t in ("snapshot_name_already_in_use_exception", "invalid_snapshot_name_exception"))


def start_snapshot(es: Elasticsearch, repository: str, snapshot: str, indices: list[str]) -> bool:
    """Start the snapshot; False when a snapshot of ours by that name exists already.

    So a retry after a create whose answer was lost goes on with the first attempt's snapshot
    instead of failing on "already exists". A snapshot by that name not taken by this tool is
    an error, never adopted.
    """
    try:
        es.snapshot.create(repository=repository, snapshot=snapshot, indices=",".join(indices),
                           include_global_state=False, wait_for_completion=False, metadata=TAKEN_BY)
        return True
    except ApiError as exc:
        if not _exists_already(exc):
            raise classify(exc) from exc
    try:
        found = es.snapshot.get(repository=repository, snapshot=snapshot,
                                ignore_unavailable=True)["snapshots"]
    except Exception as exc:
        raise classify(exc) from exc
    if found and (found[0].get("metadata") or {}).get("taken_by") == TAKEN_BY["taken_by"]:
        return False
    raise ElasticsearchError(f"snapshot {snapshot} already exists in {repository} and was not "
                             "taken by thehive-backup")


def snapshot_indices(es: Elasticsearch, repository: str, snapshot: str, indices: list[str], *,
                     timeout: float = 6 * 3600, poll: float = 1.0) -> dict:
    """Start the snapshot (or find ours by that name), wait for its end, and return its record;
    raise unless SUCCESS (a PARTIAL or FAILED snapshot found again is as definite an error)."""
    start_snapshot(es, repository, snapshot, indices)
    deadline = time.monotonic() + timeout
    while True:
        info = es.snapshot.get(repository=repository, snapshot=snapshot)["snapshots"][0]
        if info["state"] not in ("IN_PROGRESS", "STARTED", "INIT"):
            break
        if time.monotonic() > deadline:
            raise ElasticsearchError(f"snapshot {snapshot} still {info['state']} after {timeout}s")
        time.sleep(poll)
    shards = info.get("shards", {})
    if info["state"] != "SUCCESS" or shards.get("failed", 0):
        reasons = "; ".join(f.get("reason", "") for f in info.get("failures", []))
        raise ElasticsearchError(
            f"snapshot {snapshot} ended {info['state']} with {shards.get('failed')} failed "
            f"shard(s) of {shards.get('total')}: {reasons}")
    return info


def index_stats(es: Elasticsearch, indices: list[str]) -> dict[str, dict]:
    stats = es.indices.stats(index=",".join(indices), metric="docs")["indices"]
    settings = es.indices.get_settings(index=",".join(indices), name="index.number_of_shards")
    return {
        name: {"docs": stats[name]["primaries"]["docs"]["count"],
               "shards": int(settings[name]["settings"]["index"]["number_of_shards"])}
        for name in indices
    }


def delete_snapshot(es: Elasticsearch, repository: str, snapshot: str) -> None:
    try:
        es.snapshot.delete(repository=repository, snapshot=snapshot)
    except NotFoundError:
        pass


# -- backup step and Prefect tasks --------------------------------------------------------------

def prepare(settings: EsSettings) -> list[str]:
    """Preflight: cluster not red, repository registered and verified; the indices to save."""
    with es_session(settings) as es:
        status = health(es)
        if status == "red":
            raise ElasticsearchError("cluster health is red")
        repo = settings.snapshot_repository
        ensure_repository(es, repo.name, repo.type, repo.settings)
        return matching_indices(es, settings.index_patterns)


def snapshot(settings: EsSettings, backup_id: str) -> dict:
    """Snapshot the matching indices under the backup id; the manifest's ``elasticsearch``.

    Idempotent: called again with the same id it waits for (or reads) the snapshot the first
    call made and returns the same record; the indices recorded are the snapshot's own.
    """
    with es_session(settings) as es:
        indices = matching_indices(es, settings.index_patterns)
        repo = settings.snapshot_repository
        info = snapshot_indices(es, repo.name, backup_id, indices)
        indices = sorted(info.get("indices") or indices)
        return {
            "version": server_version(es), "repository": repo.name, "repository_type": repo.type,
            "snapshot": backup_id, "uuid": info.get("uuid"), "state": info["state"],
            "indices": index_stats(es, indices), "shards": info.get("shards", {}),
            "seconds": info.get("duration_in_millis", 0) / 1000,
        }


# -- restore -----------------------------------------------------------------------------------

def check_snapshot(settings: EsSettings, record: ElasticsearchRecord) -> str | None:
    """Validation: the backup's snapshot still exists in its repository and is SUCCESS."""
    try:
        with es_session(settings) as es:
            snaps = es.snapshot.get(repository=record.repository, snapshot=record.snapshot,
                                    ignore_unavailable=True)["snapshots"]
    except ElasticsearchError as exc:
        return f"elasticsearch snapshot {record.snapshot}: {exc}"
    if not snaps:
        return f"elasticsearch snapshot {record.snapshot} is not in repository {record.repository}"
    if snaps[0]["state"] != "SUCCESS":
        return f"elasticsearch snapshot {record.snapshot} is {snaps[0]['state']}"
    missing = set(record.indices) - set(snaps[0]["indices"])
    return f"elasticsearch snapshot lacks indices {sorted(missing)}" if missing else None


def restore_snapshot(settings: EsSettings, record: ElasticsearchRecord, *, timeout: float = 3600) -> dict:
    """Delete only the indices the snapshot holds (and TheHive's renamed ones), restore them,
    and wait until they are at least yellow."""
    indices = sorted(record.indices)
    with es_session(settings) as es:
        existing = matching_indices_or_none(es, settings.index_patterns + indices)
        if existing:
            es.indices.delete(index=",".join(existing), expand_wildcards="open,closed")
        slow = es.options(request_timeout=timeout)
        slow.snapshot.restore(repository=record.repository, snapshot=record.snapshot,
                              indices=",".join(indices), include_global_state=False,
                              wait_for_completion=True)
        slow.cluster.health(index=",".join(indices), wait_for_status="yellow",
                            timeout=f"{int(timeout)}s")
        docs = {name: es.count(index=name)["count"] for name in indices}
    return {"deleted": existing, "restored": indices, "docs": docs}


def matching_indices_or_none(es: Elasticsearch, patterns: list[str]) -> list[str]:
    found = es.indices.get(index=",".join(patterns), expand_wildcards="open,closed",
                           ignore_unavailable=True, allow_no_indices=True)
    return sorted(found)


@side_effect_task(name="elasticsearch restore", task_run_name="restore {record.snapshot}")
def restore_snapshot_task(settings: EsSettings, record: ElasticsearchRecord) -> dict:
    return restore_snapshot(settings, record)


# -- the way back for a restore ------------------------------------------------------------------
#: The snapshot of the indices a restore replaces; it exists only while a restore is unfinished.
PREVIOUS = "thb-rollback-previous-index"


def keep_previous(settings: EsSettings) -> ElasticsearchRecord | None:
    """Snapshot the indices the restore will replace (None when there are none). A snapshot left
    by an interrupted restore is the true previous content: it is reused, never replaced."""
    repo = settings.snapshot_repository
    with es_session(settings) as es:
        ensure_repository(es, repo.name, repo.type, repo.settings)
        found = es.snapshot.get(repository=repo.name, snapshot=PREVIOUS,
                                ignore_unavailable=True)["snapshots"]
        if found and found[0]["state"] == "SUCCESS":
            indices = found[0]["indices"]
        else:
            delete_snapshot(es, repo.name, PREVIOUS)
            indices = matching_indices_or_none(es, settings.index_patterns)
            if not indices:
                return None
            snapshot_indices(es, repo.name, PREVIOUS, indices)
    return ElasticsearchRecord(repository=repo.name, snapshot=PREVIOUS,
                               indices={i: IndexRecord() for i in indices})


def forget_previous(settings: EsSettings) -> None:
    with es_session(settings) as es:
        delete_snapshot(es, settings.snapshot_repository.name, PREVIOUS)


@side_effect_task(name="keep previous index")
def keep_previous_task(settings: EsSettings) -> ElasticsearchRecord | None:
    return keep_previous(settings)
