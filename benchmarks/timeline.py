"""Where a flow run's time goes: its task runs, and its subflows' (a restore drill's restore), read
back from the Prefect API as offsets from the flow's start and durations, so that the fixed costs
(preflight, snapshot, clearsnapshot, the flow's own start and end) show beside the streams.

    python -m benchmarks.timeline FLOW_RUN_ID [--top N]     (PREFECT_API_URL names the server)

benchmarks/compare.py records the timeline of each of our flow runs in its JSON and prints the
slowest steps of the fastest round under its table.
"""
from __future__ import annotations

import argparse
import sys
from uuid import UUID


def timeline(flow_run_id: str | UUID) -> dict:
    """{"flow": seconds of the flow run, "steps": [{"name", "start", "seconds", "state"}, ...]}
    sorted by start. A subflow shows as one step (its call) and its own steps, prefixed with its
    flow's name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        root = client.read_flow_run(UUID(str(flow_run_id)))
        runs, frontier = [(root, "")], [root.id]
        while frontier:  # subflows, level by level
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
            runs += [(c, f"{client.read_flow(c.flow_id).name}/") for c in children]
            frontier = [c.id for c in children]
        t0 = root.start_time
        steps = []
        for run, prefix in runs:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            for t in tasks:
                if t.start_time is None or t0 is None:
                    continue
                end = t.end_time or t.start_time
                steps.append({"name": prefix + t.name, "start": (t.start_time - t0).total_seconds(),
                              "seconds": (end - t.start_time).total_seconds(),
                              "state": t.state_name})
    flow_seconds = (root.end_time - t0).total_seconds() if root.end_time and t0 else None
    return {"flow": flow_seconds, "steps": sorted(steps, key=lambda s: s["start"])}


def render(tl: dict, top: int | None = None) -> str:
    """One line per step (the ``top`` longest only, still in start order)."""
    steps = tl["steps"]
    if top is not None:
        keep = {id(s) for s in sorted(steps, key=lambda s: -s["seconds"])[:top]}
        steps = [s for s in steps if id(s) in keep]
    lines = [f"  {s['start']:7.2f}s +{s['seconds']:6.2f}s  {s['name']}"
             + ("" if s["state"] in (None, "Completed") else f"  [{s['state']}]") for s in steps]
    if tl["flow"] is not None:
        lines.append(f"  flow run: {tl['flow']:.2f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.timeline", description=__doc__.split("\n\n")[0])
    p.add_argument("flow_run_id")
    p.add_argument("--top", type=int, default=None, help="only the N longest steps")
    args = p.parse_args(argv)
    print(render(timeline(args.flow_run_id), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
