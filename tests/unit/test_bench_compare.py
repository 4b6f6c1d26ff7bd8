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


def test_link_mbit_is_an_option_of_at_least_one():
    assert parse_args([]).link_mbit is None and parse_args(["--link-mbit", "1000"]).link_mbit == 1000
    with pytest.raises(SystemExit):
        parse_args(["--link-mbit", "0"])


SHAPED_TRANSFER = r"""
import socket, subprocess, sys, threading, time
from benchmarks._link import shaped_links

def rate(port, n=6 << 20):
    srv = socket.create_server(("127.0.0.9", port))
    def serve():
        c, _ = srv.accept()
        c.sendall(bytes(n))
        c.close()
    threading.Thread(target=serve, daemon=True).start()
    s, got, t = socket.create_connection(("127.0.0.9", port)), 0, time.monotonic()
    while (d := s.recv(1 << 20)):
        got += len(d)
    return got / (time.monotonic() - t)

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with shaped_links(["127.0.0.9"], 2222, 40):
    print(rate(2222))
print("htb" in subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout)
"""


def test_a_shaped_link_carries_no_more_than_its_rate_and_is_removed_after(tmp_path):
    """In a network namespace of its own: the machine's loopback is never touched."""
    import os
    import shutil
    import subprocess
    import sys
    import uuid

    if os.geteuid() != 0 or not shutil.which("tc") or not shutil.which("ip"):
        pytest.skip("needs root, tc and ip")
    ns = f"thb-link-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SHAPED_TRANSFER],
                             capture_output=True, text=True, cwd=os.getcwd())
        if "Specified qdisc kind is unknown" in out.stderr:
            pytest.skip("the kernel has no sch_htb")
        assert out.returncode == 0, out.stderr
        shaped, still_shaped = out.stdout.split()
        assert float(shaped) <= 40e6 / 8 * 1.15  # 40 Mbit/s, a burst's worth over
        assert still_shaped == "False"
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
