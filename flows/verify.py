"""Is a backup still good? ``verify_backup`` re-reads it; ``restore_drill`` restores it for real.

A drill restores the keyspace under a scratch name on the live cluster (TheHive is not touched),
compares each table's row count and content digest with what the backup recorded or, for a
default backup (which reads no row), with the live table while it still holds the backed-up
SSTables (tasks/drill.py), then drops the scratch keyspace — the proof that the day a restore is
needed, it works.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.common import resolve_stack
from flows.restore import restore
from tasks import cassandra, drill, elasticsearch
from tasks.catalog import resolve_backup_id
from tasks.digests import table_digest
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
                  scratch_keyspace: str = "thehive_restore_drill", require_proof: bool = True) -> dict:
    """Restore one keyspace of the backup into ``scratch_keyspace``, compare, drop it.

    Each scratch table's row digest is compared with the digest the backup recorded
    (``record_digests``) or, for a default backup, with the live table's when its SSTables are
    still the backed-up ones (tasks/drill.py). A table that can be compared with neither fails
    the drill unless ``require_proof=False``; its digest is shown all the same.
    """
    st = resolve_stack(stack)
    with open_repository(st) as repo:
        bid = resolve_backup_id(repo, backup_id)
        manifest = read_manifest(repo, bid)
    recorded = manifest.cassandra.keyspaces if manifest.cassandra else {}
    source = keyspace or next(iter(recorded), None)
    if source is None or source not in recorded:
        raise VerificationFailed(f"backup {bid} holds no keyspace {source!r}")
    if scratch_keyspace in st.cassandra.keyspaces:
        raise ValueError(f"scratch_keyspace {scratch_keyspace!r} is a live keyspace of the stack")
    digests = recorded[source].digests
    tables = sorted(digests) if digests is not None else sorted(recorded[source].tables)
    if digests is None and require_proof:
        unprovable = sorted(set(tables) - drill.provable_tables(st, manifest, source, tables))
        if unprovable:
            raise VerificationFailed(_unproved_message(bid, unprovable, restored=False))
    try:
        restore(stack=stack, backup_id=bid, components=["cassandra"], keyspace=source,
                target_keyspace=scratch_keyspace, confirm=True)
        with cassandra.cql_session(st, timeout=600) as session:
            got = {t: TableDigest(**table_digest(session, scratch_keyspace, t)) for t in tables}
    finally:
        cassandra.drop_keyspace(st, scratch_keyspace)
    live = drill.live_expectations(st, manifest, source, tables) if digests is None else {}
    found = drill.verdicts(got, digests, live)
    create_table_artifact(
        [{"table": v.table, "compared with": v.basis, "rows restored": v.restored.rows,
          "rows expected": v.expected.rows if v.expected else None, "content": v.content,
          "restored digest": v.restored.digest} for v in found],
        key="restore-drill", description=f"drill of {bid}")
    different = [v.table for v in found if v.content == "DIFFERENT"]
    if different:
        raise VerificationFailed(f"drill of {bid}: tables differ after restore: {different}")
    unproved = [v.table for v in found if v.expected is None]
    if unproved and require_proof:
        raise VerificationFailed(_unproved_message(bid, unproved, restored=True))
    return {"backup_id": bid, "tables": len(found), "rows": sum(v.restored.rows for v in found),
            "identical": not different, "compared": {v.table: v.basis for v in found},
            "not_compared": unproved}


def _unproved_message(bid: str, tables: list[str], restored: bool) -> str:
    what = "restored but not proved" if restored else "not proved, so nothing was restored"
    return (f"drill of {bid}: {len(tables)} table(s) {what} (the backup recorded no row "
            f"digests and their live SSTables changed since, written or compacted): {tables}; "
            "drill a backup made with record_digests=True (the scheduled verification), or pass "
            "require_proof=False")
