"""Elasticsearch operations: health, snapshot repository, snapshots of TheHive's indices.

Indices are chosen by pattern (``thehive_global*``), never by one hard-coded name, so the index
TheHive renamed after a rebuild (``thehive_global1``) is still saved. A snapshot counts as done only
when Elasticsearch reports it SUCCESS with no failed shard — not when it was merely accepted.
"""
from __future__ import annotations

import time

from elasticsearch import ApiError, ConnectionError, ConnectionTimeout, Elasticsearch, NotFoundError

from prefect import task
from prefect.cache_policies import NO_CACHE

from config.model import Elasticsearch as EsSettings
from tasks.manifest import ElasticsearchRecord, IndexRecord
from tasks.policy import RETRYING


class ElasticsearchError(Exception):
    transient = False


class TransientElasticsearchError(ElasticsearchError):
    transient = True


def es_client(settings: EsSettings) -> Elasticsearch:
    auth = None
    if settings.username is not None:
        auth = (settings.username, settings.password.resolve().get_secret_value())
    return Elasticsearch(settings.url, basic_auth=auth, verify_certs=settings.verify_certs,
                         ca_certs=settings.ca_certs, request_timeout=settings.request_timeout,
                         retry_on_timeout=True, max_retries=3)


def classify(exc: Exception) -> ElasticsearchError:
    """429/5xx and connection faults are transient; everything else is a definite error."""
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


def snapshot_indices(es: Elasticsearch, repository: str, snapshot: str, indices: list[str], *,
                     timeout: float = 6 * 3600, poll: float = 1.0) -> dict:
    """Start the snapshot, wait for its end, and return its record; raise unless SUCCESS."""
    try:
        es.snapshot.create(repository=repository, snapshot=snapshot, indices=",".join(indices),
                           include_global_state=False, wait_for_completion=False,
                           metadata={"taken_by": "thehive-backup"})
    except Exception as exc:
        raise classify(exc) from exc
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
    es = es_client(settings)
    try:
        status = health(es)
        if status == "red":
            raise ElasticsearchError("cluster health is red")
        repo = settings.snapshot_repository
        ensure_repository(es, repo.name, repo.type, repo.settings)
        return matching_indices(es, settings.index_patterns)
    finally:
        es.close()


def snapshot(settings: EsSettings, backup_id: str) -> dict:
    """Snapshot the matching indices under the backup id; the manifest's ``elasticsearch``."""
    es = es_client(settings)
    try:
        indices = matching_indices(es, settings.index_patterns)
        repo = settings.snapshot_repository
        info = snapshot_indices(es, repo.name, backup_id, indices)
        return {
            "version": server_version(es), "repository": repo.name, "repository_type": repo.type,
            "snapshot": backup_id, "uuid": info.get("uuid"), "state": info["state"],
            "indices": index_stats(es, indices), "shards": info.get("shards", {}),
            "seconds": info.get("duration_in_millis", 0) / 1000,
        }
    finally:
        es.close()


@task(name="elasticsearch snapshot", task_run_name="snapshot {backup_id}", **RETRYING)
def snapshot_task(settings: EsSettings, backup_id: str) -> dict:
    return snapshot(settings, backup_id)


# -- restore -----------------------------------------------------------------------------------

def check_snapshot(settings: EsSettings, record: ElasticsearchRecord) -> str | None:
    """Validation: the backup's snapshot still exists in its repository and is SUCCESS."""
    es = es_client(settings)
    try:
        snaps = es.snapshot.get(repository=record.repository, snapshot=record.snapshot,
                                ignore_unavailable=True)["snapshots"]
    except Exception as exc:
        return f"elasticsearch snapshot {record.snapshot}: {classify(exc)}"
    finally:
        es.close()
    if not snaps:
        return f"elasticsearch snapshot {record.snapshot} is not in repository {record.repository}"
    if snaps[0]["state"] != "SUCCESS":
        return f"elasticsearch snapshot {record.snapshot} is {snaps[0]['state']}"
    missing = set(record.indices) - set(snaps[0]["indices"])
    return f"elasticsearch snapshot lacks indices {sorted(missing)}" if missing else None


def restore_snapshot(settings: EsSettings, record: ElasticsearchRecord, *, timeout: float = 3600) -> dict:
    """Delete only the indices the snapshot holds (and TheHive's renamed ones), restore them,
    and wait until they are at least yellow."""
    es = es_client(settings)
    indices = sorted(record.indices)
    try:
        existing = matching_indices_or_none(es, settings.index_patterns + indices)
        if existing:
            es.indices.delete(index=",".join(existing), expand_wildcards="open,closed")
        es.snapshot.restore(repository=record.repository, snapshot=record.snapshot,
                            indices=",".join(indices), include_global_state=False,
                            wait_for_completion=True, request_timeout=timeout)
        es.cluster.health(index=",".join(indices), wait_for_status="yellow",
                          timeout=f"{int(timeout)}s", request_timeout=timeout)
        docs = {name: es.count(index=name)["count"] for name in indices}
    except Exception as exc:
        raise classify(exc) from exc
    finally:
        es.close()
    return {"deleted": existing, "restored": indices, "docs": docs}


def matching_indices_or_none(es: Elasticsearch, patterns: list[str]) -> list[str]:
    found = es.indices.get(index=",".join(patterns), expand_wildcards="open,closed",
                           ignore_unavailable=True, allow_no_indices=True)
    return sorted(found)


@task(name="elasticsearch restore", task_run_name="restore {record.snapshot}", **RETRYING)
def restore_snapshot_task(settings: EsSettings, record: ElasticsearchRecord) -> dict:
    return restore_snapshot(settings, record)


# -- the way back for a restore ------------------------------------------------------------------
#: The snapshot of the indices a restore replaces; it exists only while a restore is unfinished.
PREVIOUS = "thb-rollback-previous-index"


def keep_previous(settings: EsSettings) -> ElasticsearchRecord | None:
    """Snapshot the indices the restore will replace (None when there are none). A snapshot left
    by an interrupted restore is the true previous content: it is reused, never replaced."""
    es = es_client(settings)
    repo = settings.snapshot_repository
    try:
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
    except Exception as exc:
        raise classify(exc) from exc
    finally:
        es.close()
    return ElasticsearchRecord(repository=repo.name, snapshot=PREVIOUS,
                               indices={i: IndexRecord() for i in indices})


def forget_previous(settings: EsSettings) -> None:
    es = es_client(settings)
    try:
        delete_snapshot(es, settings.snapshot_repository.name, PREVIOUS)
    finally:
        es.close()


@task(name="keep previous index", cache_policy=NO_CACHE, **RETRYING)
def keep_previous_task(settings: EsSettings) -> ElasticsearchRecord | None:
    return keep_previous(settings)
