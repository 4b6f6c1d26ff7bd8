"""The artifacts every flow leaves in the Prefect UI: tables and short markdown reports.

Kept together so that a flow module reads as orchestration only, and one place decides how a run
is shown to an operator.
"""
from __future__ import annotations

from collections.abc import Iterable

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.catalog import mib, stored_bytes
from tasks.manifest import Manifest


def restore_report(report: dict, error: Exception | None) -> None:
    rows = []
    for ks, r in (report.get("cassandra") or {}).items():
        rows.append({"what": f"cassandra {ks}", "detail": f"{r['archives']} archives via {r['method']}",
                     "note": r["auto_snapshot_note"]})
    if es := report.get("elasticsearch"):
        rows.append({"what": "elasticsearch", "detail": str(es.get("docs", es)), "note": ""})
    if f := report.get("files"):
        rows.append({"what": "attachments", "detail": f"{f['files']} files verified", "note": ""})
    rows.append({"what": "outcome", "detail": report["outcome"], "note": ""})
    rows.append({"what": "thehive", "detail": report.get("thehive", "not touched"), "note": ""})
    create_table_artifact(rows, key="restore-report",
                          description=(f"FAILED: {error}" if error else f"restored in {report['seconds']}s"))


def cold_restore_report(backup_id: str, events: list[dict], moved: dict, restart: str, seconds: float | None,
            errors: list[str]) -> None:
    create_markdown_artifact(
        f"# Cold restore of `{backup_id}`\n\n"
        f"- extraction: {'ok' if not errors else 'FAILED'}\n"
        + "".join(f"  - {e}\n" for e in errors)
        + f"- restart: {restart}\n- seconds: {seconds}\n"
        + ("- moved aside (not deleted):\n" + "".join(f"  - {k} → {v}\n" for k, v in moved.items())
           if moved else "")
        + f"- steps: {len(events)}\n",
        key="cold-restore-report")


def downtime(events: Iterable[dict]) -> float | None:
    stops = [e["t"] for e in events if e["event"] in ("drain", "stop")]
    healthy = [e["t"] for e in events if e["event"] == "healthy"]
    if not stops or not healthy:
        return None
    return round(max(healthy) - min(stops), 2)


def cold_backup_report(manifest: Manifest, restart: str, down: float | None, events: list[dict]) -> None:
    rows = [{"node": o.node, "service": o.service or "", "folder": o.name or "",
             "path": o.path or "", "files": o.files, "raw MiB": mib(o.raw_size or 0),
             "stored MiB": mib(o.size), "seconds": o.seconds if o.seconds is not None else ""}
            for o in manifest.objects if o.role == "archive"]
    create_table_artifact(rows, key="cold-backup-folders", description=manifest.backup_id)
    steps = "".join(f"| {e['event']} | {e['service'] or e.get('step', '')} | {e['node'] or ''} | "
                    f"{e['t'] - events[0]['t']:.1f} |\n" for e in events) if events else ""
    create_markdown_artifact(
        f"# Cold backup `{manifest.backup_id}`\n\n"
        f"- copy: ok, {len(rows)} folders, {mib(manifest.size)} MiB stored\n"
        f"- restart: {restart}\n"
        f"- downtime (first stop → last healthy): {down} s\n"
        f"- timings (s): {manifest.timings}\n\n"
        "| step | service | node | +s |\n|---|---|---|---|\n" + steps,
        key="cold-backup-report")


def cold_backup_failure_report(backup_id: str, copy_error: str, restart: str, down: float | None,
                    leftovers: list[str]) -> None:
    create_markdown_artifact(
        f"# Cold backup `{backup_id}` FAILED — no manifest written\n\n"
        f"- copy: {copy_error}\n- restart: {restart}\n- downtime: {down} s\n\n"
        f"Partial objects to clean up ({len(leftovers)}):\n\n"
        + "".join(f"- `{k}`\n" for k in leftovers),
        key="cold-backup-report")


def hot_backup_report(manifest: Manifest) -> None:
    rows = []
    for o in manifest.objects:
        seconds = o.seconds or 0
        rows.append({
            "component": o.component, "node": o.node or "", "object": o.table or o.key.rsplit("/", 1)[-1],
            "raw MiB": mib(o.raw_size or o.size),
            "stored MiB": mib(o.size + sum(p.stored_size for p in o.parts or [])),  # components too
            "seconds": round(seconds, 2),
            "MiB/s": round(mib(o.raw_size or o.size) / seconds, 1) if seconds else "",
        })
    create_table_artifact(rows, key="hot-backup-objects", description=f"{manifest.backup_id}")
    es = manifest.elasticsearch
    needed, added = stored_bytes(manifest)
    create_markdown_artifact(
        f"# Backup `{manifest.backup_id}`\n\n"
        f"- stack: {manifest.stack}; components: {', '.join(manifest.components)}\n"
        f"- objects: {len(manifest.objects)}, {mib(needed)} MiB stored ({mib(added)} MiB written by "
        "this backup, the rest shared with earlier ones)\n"
        f"- Elasticsearch: {es.state if es else '-'} {', '.join(es.indices) if es else ''}\n"
        f"- timings (s): {manifest.timings}\n",
        key="hot-backup-report")


def hot_backup_failure_report(backup_id: str, errors: list[str], leftovers: list[str], es: bool) -> None:
    create_markdown_artifact(
        f"# Backup `{backup_id}` FAILED — no manifest written\n\n"
        + "".join(f"- {e}\n" for e in errors)
        + f"\nPartial objects to clean up ({len(leftovers)}):\n\n"
        + "".join(f"- `{k}`\n" for k in leftovers)
        + (f"\nElasticsearch snapshot `{backup_id}` may exist.\n" if es else "")
        + "\n`prune` removes them, with temporary files, once older than its grace period.\n",
        key="hot-backup-report")
