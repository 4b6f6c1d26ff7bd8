"""benchmarks/compare.py: its arguments and its verdicts on made-up figures (no stack)."""
from __future__ import annotations

import pytest

from benchmarks.compare import parse_args, targets


def test_defaults_and_lists():
    args = parse_args([])
    assert (args.size_mb, args.nodes, args.repeats, args.keep) == (2048, [1], 2, False)
    assert args.json.name.startswith("compare-") and args.json.suffix == ".json"
    assert parse_args(["--nodes", "1,3", "--repeats", "3"]).nodes == [1, 3]


@pytest.mark.parametrize("argv", [["--nodes", "2"], ["--repeats", "0"], ["--size-mb", "x"]])
def test_bad_arguments_exit(argv):
    with pytest.raises(SystemExit):
        parse_args(argv)


def _s(what, seconds, nbytes=None, rss=None, **extra):
    return {"what": what, "seconds": seconds, "cpu": 1.0, "bytes": nbytes, "rss": rss, **extra}


def test_targets_pass_and_fail_on_the_figures():
    summary = [
        _s("raw copy: x", 10.0, 1000),
        _s("hot_backup, archive storage, full", 12.0, 900, rss=250),
        _s("cassandra-medusa 0.31.0, differential after a differential", 4.0, 10),
        _s("hot_backup, incremental storage, full", 13.0, 1000, rss=200),
        _s("hot_backup, incremental storage, no change", 5.0, 20, rss=310),
        _s("hot_backup, incremental storage, after 1 % new rows", 6.0, 30, changed_bytes=10),
        _s("restore: flows.restore.restore (confirm=True)", 11.0, rss=100),
        _s("restore by hand: x", 10.0),
        _s("hot_backup, archive storage, one node after another", 30.0),
    ]
    got = {name: ok for name, ok, _ in targets(summary)}
    assert got == {
        "full hot backup, archive storage <= 1.25x raw copy": True,
        "full hot backup with defaults (incremental storage) <= 1.25x raw copy": False,
        "nodes backed up at once <= 0.6x one after another": True,
        "no-change run < 1 % of the first run's bytes": False,
        "no-change run <= 1.2x Medusa's differential time": False,
        "after 1 % new rows: bytes within 2x of what changed": False,
        "restore <= 1.1x the same by hand": True,
        "peak RSS of the flow process < 300 MB": False,
    }
