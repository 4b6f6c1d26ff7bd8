"""Our backup and restore side by side with a raw copy, the reference guide and cassandra-medusa (issue 9).

    python -m benchmarks.compare [--size-mb 2048] [--nodes 1,3] [--repeats 2] [--json PATH] [--keep]
                                 [--link-mbit 1000]

Starts its own real stack under a temp dir (Cassandra 4.1 with PasswordAuthenticator, the harness's
OpenSSH server; addresses 127.0.5.x, JMX ports +35000, apart from the test stacks and from
benchmarks/throughput.py), fast-seeds the ``thehive`` keyspace (``tests.stack.fastseed``; --size-mb
counts row bytes, the LZ4 SSTables are about half) and, for each node count, runs every alternative
once per round, round after round (--repeats), so that all of them see the same machine load:

1. raw copy: ``nodetool snapshot`` + ``ssh node tar cf - <snapshot dirs> > file`` + ``clearsnapshot``,
   all through the real sshd (the 1.00 of every ratio);
2. the reference guide's script (tests/stack/guide.py: ``tar cjf`` per table of every keyspace on
   the node), then ``scp -r`` of its archives;
3. ``hot_backup(components=["cassandra"])`` with ``cassandra.storage: archive``, full,
   into a new local repository (the backup both restores below bring back); on several nodes, also the same
   one node after another (a stack file naming one node, a run each: the sum of their times);
4. the same with ``cassandra.storage: incremental`` (the default): a full run, a run with no change,
   then 1 % new rows (fast_seed with another seed) and a third run; "bytes" is what each run added
   to the repository;
5. cassandra-medusa full, first differential, and differential after a differential, in its own
   venv (--medusa-venv), local storage; if it cannot run, the reason is printed and the rest goes on;
6. ``flows.restore.restore`` (confirm=True) of round's full backup vs the same by hand (untar each
   archive on its node over SSH, drop and re-create the keyspace, ``nodetool import``). The
   restores bring back the pre-1 % data, so every round starts from the same rows.

--link-mbit N puts each node's SSH traffic behind a link of N Mbit/s each way (benchmarks/_link.py),
as a node's network card in production; without it loopback is as fast as the CPUs, and every
ratio compares CPU spent per byte.

Figures: seconds = min over rounds (for our flows, the time of the flow call in its child process,
interpreter start-up left out; "wall" in the JSON includes it); CPU-s = this process and its
waited-for children (the flow process, ssh/scp/tar clients, Medusa, local nodetool JVMs) + the sshd
master's (every SSH session's commands on the nodes) + the Cassandra JVMs' (benchmarks/_measure.py),
min over rounds; bytes stored = the files written (du -sb); peak RSS = of the one child process that
ran the step (our flow process, Medusa, an ssh or scp client), max over rounds. Everything started is
stopped and removed at the end (--keep keeps the folder), also on Ctrl-C; after a failure the folder
is kept for its node logs, and its path printed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks._alternatives import ARCHIVE_FULL, DEFAULTS, NODE_BY_NODE
from benchmarks._link import shaped_links
from benchmarks.throughput import _csv, check_disk, start_and_seed, table
from benchmarks.timeline import render

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")

NET = "127.0.5"
JMX_OFFSET = 35000
RSS_LIMIT_MIB = 300


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from tests.stack.proc import cache_dir

    today = datetime.date.today().isoformat()
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=2048, help="row bytes to seed, MiB (default 2048)")
    p.add_argument("--nodes", type=_csv(int, (1, 3)), default=[1], help="node counts: 1 or 1,3 (default 1)")
    p.add_argument("--repeats", type=int, default=2, help="rounds over every alternative (default 2)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results") / f"compare-{today}.json",
                   help="where to write every figure (default benchmarks/results/compare-<date>.json)")
    p.add_argument("--medusa-venv", type=Path, default=cache_dir() / "medusa-0.31.0-venv",
                   help="cassandra-medusa's own venv, made on first use")
    p.add_argument("--root", type=Path, default=None, help="stack folder (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the stack folder at the end")
    p.add_argument("--log-level", default="WARNING", help="Prefect log level (default WARNING)")
    p.add_argument("--link-mbit", type=int, default=None,
                   help="each node's SSH traffic over a link of this many Mbit/s each way (tc HTB on lo; "
                        "benchmarks/_link.py); default: loopback as fast as the CPUs")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.link_mbit is not None and args.link_mbit < 1:
        p.error("--link-mbit must be at least 1")
    return args


def round_of(bench, rep: int) -> Iterator[dict]:
    """Every alternative once, in an order that leaves the same rows for the next round."""
    yield bench.raw_copy(rep)
    yield bench.guide(rep)
    full = bench.ours_full(rep)
    yield full
    if len(bench.cluster.nodes) > 1:
        yield bench.ours_node_by_node(rep)
    yield from bench.medusa(rep)
    yield from bench.ours_incremental(rep)  # writes 1 % new rows
    pair = [bench.restore_ours, bench.restore_by_hand]
    for restore in pair if rep % 2 else pair[::-1]:  # each restores the pre-1 % backup
        yield restore(full)
    shutil.rmtree(full["repository"], ignore_errors=True)


def summarize(rows: list[dict]) -> list[dict]:
    """One line per alternative: min seconds and CPU over rounds, max peak RSS, last bytes."""
    out: dict[str, dict] = {}
    for r in rows:
        s = out.setdefault(r["what"], {"what": r["what"], "runs": []})
        s["runs"].append(r)
    for s in out.values():
        runs = s["runs"]
        s["seconds"] = min(r["seconds"] for r in runs)
        s["cpu"] = min(r["cpu"] for r in runs)
        s["bytes"] = next((r["bytes"] for r in reversed(runs) if r["bytes"] is not None), None)
        rss = [r["rss"] for r in runs if r.get("rss")]
        s["rss"] = max(rss) if rss else None
        for key in ("changed_bytes", "first_run_bytes"):
            if key in runs[-1]:
                s[key] = runs[-1][key]
    return list(out.values())


def find(summary: list[dict], prefix: str) -> dict | None:
    return next((s for s in summary if s["what"].startswith(prefix)), None)


def targets(summary: list[dict]) -> list[tuple[str, bool | None, str]]:
    """Issue 9's targets this benchmark can check: (target, PASS/FAIL/None = not measured, figures)."""
    raw, archive = find(summary, "raw copy"), find(summary, ARCHIVE_FULL)
    inc_full, same = find(summary, f"{DEFAULTS}, full"), find(summary, f"{DEFAULTS}, no")
    more = find(summary, f"{DEFAULTS}, after")
    medusa = find(summary, "cassandra-medusa") and find(summary, "cassandra-medusa 0.31.0, differential after")
    ours, hand = find(summary, "restore: flows"), find(summary, "restore by hand")
    out: list[tuple[str, bool | None, str]] = []
    for name, full in (("full hot backup with defaults (incremental storage)", inc_full),
                       ("full hot backup, archive storage", archive)):
        if raw and full:
            x = full["seconds"] / raw["seconds"]
            out.append((f"{name} <= 1.25x raw copy", x <= 1.25,
                        f"{full['seconds']:.1f}s / {raw['seconds']:.1f}s = {x:.2f}x"))
    one_by_one = find(summary, NODE_BY_NODE)
    if archive and one_by_one:
        x = archive["seconds"] / one_by_one["seconds"]
        out.append(("nodes backed up at once <= 0.6x one after another", x <= 0.6,
                    f"{archive['seconds']:.1f}s / {one_by_one['seconds']:.1f}s = {x:.2f}x"))
    if same and inc_full:
        frac = same["bytes"] / inc_full["bytes"] if inc_full["bytes"] else float("inf")
        out.append(("no-change run < 1 % of the first run's bytes", frac < 0.01,
                    f"{same['bytes']} / {inc_full['bytes']} B = {100 * frac:.3f} %"))
        if medusa:
            x = same["seconds"] / medusa["seconds"]
            out.append(("no-change run <= 1.2x Medusa's differential time", x <= 1.2,
                        f"{same['seconds']:.1f}s / {medusa['seconds']:.1f}s = {x:.2f}x"))
        else:
            out.append(("no-change run <= 1.2x Medusa's differential time", None, "Medusa did not run"))
    if more and more.get("changed_bytes"):
        x = more["bytes"] / more["changed_bytes"]
        out.append(("after 1 % new rows: bytes within 2x of what changed", x <= 2.0,
                    f"{more['bytes']} B added / {more['changed_bytes']} B of new SSTables = {x:.2f}x"))
    if ours and hand:
        x = ours["seconds"] / hand["seconds"]
        out.append(("restore <= 1.1x the same by hand", x <= 1.1,
                    f"{ours['seconds']:.1f}s / {hand['seconds']:.1f}s = {x:.2f}x"))
    flows = [s for s in summary if s["what"].startswith(("hot_backup", "restore: flows")) and s["rss"]]
    if flows:
        worst = max(flows, key=lambda s: s["rss"])
        out.append((f"peak RSS of the flow process < {RSS_LIMIT_MIB} MB", worst["rss"] < RSS_LIMIT_MIB,
                    f"max {worst['rss']:.0f} MiB ({worst['what']})"))
    return out


def report(nodes: int, summary: list[dict]) -> str:
    raw = find(summary, "raw copy")
    lines = []
    for s in summary:
        lines.append({
            "what": s["what"], "seconds": f"{s['seconds']:.2f}",
            "x raw copy": f"{s['seconds'] / raw['seconds']:.2f}" if raw and raw["seconds"] else "-",
            "CPU-s": f"{s['cpu']:.1f}",
            "bytes stored": f"{s['bytes']:,}" if s["bytes"] is not None else "-",
            "peak RSS MB": f"{s['rss']:.0f}" if s["rss"] else "-"})
    text = [f"{nodes} node(s):", table(lines, ["what", "seconds", "x raw copy", "CPU-s", "bytes stored",
                                                "peak RSS MB"]), ""]
    for name, ok, figures in targets(summary):
        verdict = "n/a " if ok is None else ("PASS" if ok else "FAIL")
        text.append(f"  {verdict}  {name}: {figures}")
    for s in summary:  # where our flows' time went, in their fastest round
        fastest = min(s["runs"], key=lambda r: r["seconds"])
        for tl in fastest.get("timelines") or []:
            if tl:
                text += ["", f"  {s['what']}, slowest steps of its fastest round:", render(tl, top=6)]
    return "\n".join(text)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", args.log_level)
    signal.signal(signal.SIGTERM, _interrupt)  # stop everything as on Ctrl-C
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from benchmarks._alternatives import Bench
    from tests.stack.stack import Layout, RealStack

    made_root = args.root is None
    root = Path(tempfile.mkdtemp(prefix="thb-compare-")) if made_root else args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    check_disk(root, args.size_mb, [n + 2 for n in args.nodes])  # + the guide's and raw copies
    load0 = os.getloadavg()
    print(f"CPUs: {os.cpu_count()}; load average at start: {' '.join(f'{x:.2f}' for x in load0)}", flush=True)
    real_stack = RealStack(root, Layout(net=NET, jmx_offset=JMX_OFFSET))
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "load_start": load0, "clusters": []}
    failed, interrupted = True, False
    try:
        with prefect_test_harness(server_startup_timeout=180):
            for nodes in args.nodes:
                cluster, seeding, on_disk = start_and_seed(real_stack, nodes, args.size_mb, args.seed)
                print(seeding, flush=True)
                bench = Bench(real_stack, cluster, root / "bench" / f"{nodes}n", args, PREFECT_API_URL.value())
                rows: list[dict] = []
                with shaped_links([n.address for n in cluster.nodes], real_stack.sshd.port, args.link_mbit):
                    for rep in range(1, args.repeats + 1):
                        for r in round_of(bench, rep):
                            rows.append(r)
                            print(f"  round {rep}: {r['what']}: {r['seconds']:.1f}s, {r['cpu']:.1f} CPU-s, "
                                  f"{r['bytes'] if r['bytes'] is not None else '-'} B", flush=True)
                if bench.medusa_error:
                    print(f"  Medusa did not run: {bench.medusa_error}", flush=True)
                summary = summarize(rows)
                results["clusters"].append({
                    "nodes": nodes, "seeding": seeding, "keyspace_bytes_per_node": on_disk,
                    "medusa_error": bench.medusa_error, "summary": summary,
                    "targets": [{"target": n, "pass": ok, "figures": f} for n, ok, f in targets(summary)]})
                results["clusters"][-1]["report"] = report(nodes, summary)
                cluster.stop()
        failed = False
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        real_stack.stop()
        if failed and not interrupted:
            print(f"FAILED: the stack folder (node logs) is kept in {root}", file=sys.stderr)
        elif made_root and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    results["load_end"] = os.getloadavg()
    print()
    link = f"each node behind {args.link_mbit} Mbit/s" if args.link_mbit else "loopback, unshaped"
    print(f"Side by side, {args.size_mb} MiB of rows (seed {args.seed}), {args.repeats} round(s), {link}; "
          f"seconds and CPU-s: min over rounds; peak RSS: max (MiB)")
    for c in results["clusters"]:
        print(c["seeding"])
        print(c["report"])
        if c["medusa_error"]:
            print(f"  Medusa: {c['medusa_error']}")
        print()
    print("seconds: our flows' rows time the flow call in its child process (interpreter start-up left "
          "out; 'wall' in the JSON has it); every other row times its whole commands. CPU-s: this process "
          "tree + the sshd's sessions + the Cassandra JVMs. Peak RSS: the child process that ran the step.")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in results['load_end'])}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
