"""Is a backup still good? ``verify_backup`` re-reads it; ``restore_drill`` restores it for real.

A drill restores the keyspace under a scratch name on the live cluster (TheHive is not touched),
compares each table's row count and content digest with what the backup recorded, then drops the
scratch keyspace — the proof that the day a restore is needed, it works.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.common import resolve_stack
from flows.restore import restore
from tasks import cassandra, elasticsearch
from tasks.catalog import resolve_backup_id
from tasks.manifest import TableDigest, read_manifest
from tasks.repositories import open_repository
from tasks.validate import check_objects_task, stored_objects


class VerificationFailed(RuntimeError):
    pass


@flow(name="verify-backup")
def verify_backup(stack: str = "", backup_id: str = "latest") -> dict:
    """Re-read every object of a backup: presence, size, SHA-256, archive members; and the
    Elasticsearch snapshot it refers to (its copied files, when the backup holds them)."""
    st = resolve_stack(stack)
    with open_repository(st) as repo:
        bid = resolve_backup_id(repo, backup_id)
        manifest = read_manifest(repo, bid)
    problems = check_objects_task(st, manifest.model_copy(update={"objects": stored_objects(manifest)}))
    # a backup holding the ES repository's files restores without the snapshot in ES
    if manifest.elasticsearch and st.elasticsearch and not manifest.elasticsearch.files:
        if problem := elasticsearch.check_snapshot(st.elasticsearch, manifest.elasticsearch):
            problems.append(problem)
    create_table_artifact([{"problem": p} for p in problems] or [{"problem": "none"}],
                          key="verify-backup", description=f"{bid}: {len(manifest.objects)} objects")
    if problems:
        raise VerificationFailed(f"backup {bid}: {len(problems)} problem(s):\n- " + "\n- ".join(problems))
    get_run_logger().info("backup %s verified: %d objects", bid, len(manifest.objects))
    return {"backup_id": bid, "objects": len(manifest.objects), "bytes": manifest.size, "ok": True}


@flow(name="restore-drill")
def restore_drill(stack: str = "", backup_id: str = "latest", keyspace: str | None = None,
                  scratch_keyspace: str = "thehive_restore_drill") -> dict:
    """Restore one keyspace of the backup into ``scratch_keyspace``, compare, drop it."""
    st = resolve_stack(stack)
    with open_repository(st) as repo:
        bid = resolve_backup_id(repo, backup_id)
        manifest = read_manifest(repo, bid)
    recorded = manifest.cassandra.keyspaces if manifest.cassandra else {}
    source = keyspace or next(iter(recorded), None)
    if source is None or source not in recorded or recorded[source].digests is None:
        raise VerificationFailed(f"backup {bid} recorded no table digests for {source!r}; "
                                 "make it with record_digests=True")
    if scratch_keyspace in st.cassandra.keyspaces:
        raise ValueError(f"scratch_keyspace {scratch_keyspace!r} is a live keyspace of the stack")
    expected = recorded[source].digests
    try:
        restore(stack=stack, backup_id=bid, components=["cassandra"], keyspace=source,
                target_keyspace=scratch_keyspace, confirm=True)
        with cassandra.cql_session(st, timeout=600) as session:
            got = {t: cassandra.table_digest(session, scratch_keyspace, t) for t in expected}
    finally:
        cassandra.drop_keyspace(st, scratch_keyspace)
    rows = [{"table": t, "rows backed up": e.rows, "rows restored": got[t]["rows"],
             "content": "identical" if TableDigest(**got[t]) == e else "DIFFERENT"}
            for t, e in expected.items()]
    create_table_artifact(rows, key="restore-drill", description=f"drill of {bid}")
    different = [r["table"] for r in rows if r["content"] != "identical"]
    if different:
        raise VerificationFailed(f"drill of {bid}: tables differ after restore: {different}")
    return {"backup_id": bid, "tables": len(rows), "rows": sum(r["rows restored"] for r in rows),
            "identical": True}
