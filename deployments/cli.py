"""``thehive-backup``: the flows from a shell, for people who work there.

Each command calls the same flow the UI and the schedules run, in this process (Prefect logs show
the progress of long steps). Output is a human table or summary by default and JSON with
``--json``. Every error ends the command with one line on stderr and a non-zero exit: 1 when the
work failed or was refused, 2 for a usage mistake. Destructive commands are dry runs unless
``--yes`` is given (restore, rebuild-node, prune, a forced unlock).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

# Before Prefect is imported: a shell run without a Prefect server gets a throwaway one, which a
# busy machine may start slowly; and no telemetry from an operator's shell.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from flows.common import STACK_ENV, resolve_stack  # noqa: E402
from tasks.archive import Compression  # noqa: E402

COMPONENTS = ("cassandra", "elasticsearch", "files")


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    """A plain aligned table: what an operator reads at 3 a.m., no library needed."""
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _summary(result: Any) -> str:
    """A flow's result for people: its plain values as they are, its lists and maps counted."""
    if not isinstance(result, dict):
        return str(result)
    lines = []
    for key, value in result.items():
        if isinstance(value, (list, tuple, dict)):
            value = f"{len(value)} item(s)" if value else "none"
        if value not in (None, ""):
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


# -- the commands: each returns (result for --json, text for people) ---------------------------

def _list(args) -> tuple[Any, str]:
    from flows.catalog import list_backups

    rows = list_backups(stack=args.stack)
    return rows, _table(rows, ("id", "kind", "status", "started", "components", "size_mib", "added_mib", "label"))


def _show(args) -> tuple[Any, str]:
    from tasks.manifest import read_manifest
    from tasks.repositories import open_repository

    with open_repository(resolve_stack(args.stack)) as repo:
        manifest = read_manifest(repo, args.backup_id)
    data = manifest.model_dump(mode="json")
    objects = data.get("objects") or []
    text = _summary(data)
    text += f"\nobjects: {len(objects)}\n" + _table(objects, ("key", "size"))
    return data, text


def _backup(args) -> tuple[Any, str]:
    if args.kind == "hot":
        from flows.hot_backup import hot_backup

        result = hot_backup(stack=args.stack, components=args.components or list(COMPONENTS),
                            keyspaces=args.keyspace or None, compression=args.compression,
                            record_digests=args.digests, label=args.label)
    else:
        from flows.cold_backup import cold_backup

        result = cold_backup(stack=args.stack, compression=args.compression, label=args.label)
    return result, _summary(result)


def _restore(args) -> tuple[Any, str]:
    if args.cold:
        from flows.cold_restore import cold_restore

        if args.backup_id == "latest":
            raise SystemExit("restore --cold needs a cold backup's id (see 'thehive-backup list')")
        if not args.yes:
            raise SystemExit("restore --cold changes the stack's folders: add --yes to go ahead")
        result = cold_restore(stack=args.stack, backup_id=args.backup_id, wipe=args.wipe)
        return result, _summary(result)
    from flows.restore import restore

    result = restore(stack=args.stack, backup_id=args.backup_id, components=args.components or list(COMPONENTS),
                     keyspace=args.keyspace, target_keyspace=args.target_keyspace,
                     cassandra_method=args.method, index_strategy=args.index_strategy,
                     mirror_files=args.mirror_files, reference_backup=args.reference_backup,
                     reference_date=args.reference_date, allow_partial=args.allow_partial,
                     confirm=args.yes)
    text = _summary(result)
    if not args.yes:
        text += "\n(dry run: everything was checked and nothing changed; add --yes to restore)"
    return result, text


def _verify(args) -> tuple[Any, str]:
    from flows.verify import verify_backup

    result = verify_backup(stack=args.stack, backup_id=args.backup_id)
    return result, _summary(result)


def _drill(args) -> tuple[Any, str]:
    from flows.verify import restore_drill

    result = restore_drill(stack=args.stack, backup_id=args.backup_id, keyspace=args.keyspace)
    return result, _summary(result)


def _rebuild_node(args) -> tuple[Any, str]:
    from flows.node_rebuild import node_rebuild

    result = node_rebuild(stack=args.stack, node=args.node, backup_id=args.backup_id, confirm=args.yes,
                          repair=args.repair)
    text = _summary(result)
    if not args.yes:
        text += "\n(dry run: the backup was validated and nothing changed; add --yes to rebuild the node)"
    elif result.get("repair_advice"):
        text += f"\n{result['repair_advice']}"
    return result, text


def _prune(args) -> tuple[Any, str]:
    from flows.prune import prune

    result = prune(stack=args.stack, keep_last=args.keep_last, keep_days=args.keep_days,
                   incomplete_after_hours=args.incomplete_after_hours, dry_run=not args.yes)
    text = _summary(result)
    if not args.yes:
        text += "\n(dry run: nothing was deleted; add --yes to delete)"
    return result, text


def _unlock(args) -> tuple[Any, str]:
    from flows.unlock import unlock

    rows = unlock(stack=args.stack, force=args.force, confirm=args.yes)
    return rows, _table(rows, ("key", "holder", "age", "stale", "action"))


def _alerts(args) -> tuple[Any, str]:
    from deployments.alerts import ensure_alerts

    made = ensure_alerts(args.block, stale_after_hours=args.stale_after_hours)
    return {"automations": made, "block": args.block}, "\n".join(
        f"automation {name!r} -> {args.block}" for name in made)


def _sandbox(args) -> tuple[Any, str]:
    """The demo stack lives in the source tree's test harness; an installed package has none."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "tests" / "stack" / "sandbox.py").exists():
        raise SystemExit("the sandbox needs the source tree (git clone, then 'make sandbox-up')")
    subprocess.run([sys.executable, "-m", "tests.stack.sandbox", args.action], cwd=root, check=True)
    return {"sandbox": args.action}, f"sandbox {args.action}: done"


# -- the parser --------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    def common(default: Any) -> argparse.ArgumentParser:
        """--stack and --json, accepted before or after the command."""
        g = argparse.ArgumentParser(add_help=False)
        g.add_argument("--stack", default=default if default is not None else "",
                       help=f"the stack file (default: ${STACK_ENV}, else the Prefect Variable "
                       "thehive-backup-stack)")
        g.add_argument("--json", action="store_true", default=default if default is not None else False,
                       help="print the result as JSON, for scripts")
        return g

    p = argparse.ArgumentParser(prog="thehive-backup", description=__doc__.split("\n\n")[0],
                                parents=[common(None)])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help, parents=[common(argparse.SUPPRESS)])
        c.set_defaults(run=run)
        return c

    b = command("backup", _backup, "back up the stack: hot (online) or cold (services stopped)")
    b.add_argument("kind", choices=("hot", "cold"))
    b.add_argument("--components", nargs="+", choices=COMPONENTS)
    b.add_argument("--keyspace", action="append", help="a keyspace (repeat for more)")
    b.add_argument("--compression", default="zstd", choices=get_args(Compression))
    b.add_argument("--label", default="")
    b.add_argument("--digests", dest="digests", action="store_true", default=None,
                   help="read every row for a digest per table (default: the stack file's "
                        "cassandra.record_digests)")
    b.add_argument("--no-digests", dest="digests", action="store_false",
                   help="read no row, whatever the stack file says")

    r = command("restore", _restore, "restore a backup (a dry run that checks everything, unless --yes)")
    r.add_argument("backup_id", nargs="?", default="latest")
    r.add_argument("--yes", action="store_true", help="really restore (stops TheHive, replaces data)")
    r.add_argument("--cold", action="store_true", help="restore a cold backup's folders")
    r.add_argument("--wipe", action="store_true", help="cold: move non-empty folders aside first")
    r.add_argument("--components", nargs="+", choices=COMPONENTS)
    r.add_argument("--keyspace")
    r.add_argument("--target-keyspace")
    r.add_argument("--method", default="auto", choices=("auto", "import", "sstableloader"))
    r.add_argument("--index-strategy", default="snapshot", choices=("snapshot", "rebuild"))
    r.add_argument("--mirror-files", action="store_true")
    r.add_argument("--reference-backup", default="", help="a backup made by the guide's script")
    r.add_argument("--reference-date", default="")
    r.add_argument("--allow-partial", action="store_true")

    command("list", _list, "the repository's backups, newest first")
    s = command("show", _show, "one backup's manifest")
    s.add_argument("backup_id")
    v = command("verify", _verify, "re-read every object of a backup (size, SHA-256, members)")
    v.add_argument("backup_id", nargs="?", default="latest")
    d = command("drill", _drill, "restore under a scratch keyspace, compare, drop it")
    d.add_argument("backup_id", nargs="?", default="latest")
    d.add_argument("--keyspace")
    rn = command("rebuild-node", _rebuild_node,
                 "rebuild one Cassandra node from a backup with its system keyspaces (a dry run unless --yes)")
    rn.add_argument("node", help="the node's name in the stack file")
    rn.add_argument("backup_id", nargs="?", default="latest")
    rn.add_argument("--yes", action="store_true", help="really rebuild (stops that node, moves its folders aside)")
    rn.add_argument("--repair", action="store_true", help="run nodetool repair on it afterwards when advisable")
    pr = command("prune", _prune, "apply retention (a dry run unless --yes)")
    pr.add_argument("--keep-last", type=int)
    pr.add_argument("--keep-days", type=int)
    pr.add_argument("--incomplete-after-hours", type=float, default=24)
    pr.add_argument("--yes", action="store_true")
    u = command("unlock", _unlock, "show the repository's locks, remove stale ones")
    u.add_argument("--force", action="store_true", help="also a live lock (with --yes)")
    u.add_argument("--yes", action="store_true")
    a = command("alerts", _alerts, "create or replace the alert automations (failed runs, no backup)")
    a.add_argument("block", help="the notification block, as <block-type-slug>/<name>")
    a.add_argument("--stale-after-hours", type=float, default=26,
                   help="alert when no backup completed for this long")
    sb = command("sandbox", _sandbox, "the local demo stack (source tree only)")
    sb.add_argument("action", choices=("up", "down"))
    return p


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command not in ("sandbox", "alerts"):
            resolve_stack(args.stack)  # a wrong stack is one line before any flow starts
        result, text = args.run(args)
    except SystemExit as exc:  # a refusal of ours, already one line
        if isinstance(exc.code, str):
            print(f"thehive-backup: {exc.code}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print("thehive-backup: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the entry point: one clear line, never a traceback
        print(f"thehive-backup: {args.command} failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
