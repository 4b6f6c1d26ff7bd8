"""CPU and time per GB sent over SSH: paramiko's ``sendall`` of whole chunks against ours.

    python -m benchmarks.ssh_send [--mb 1024] [--chunk-kb 1024] [--rounds 3]

Starts the harness's real sshd on 127.0.5.x (never a test stack's /24) and feeds ``--mb`` MiB,
in chunks of ``--chunk-kb`` (a restore's staging stream hands on chunks of about 1 MiB), to
``cat >/dev/null`` on the far side through ``SshHost.stream_to``, alternating the two ways in one
run, and prints the best of ``--rounds`` for each: seconds, MB/s and this process's CPU seconds
per GB (the runner's cost; sshd's is apart). paramiko's ``sendall`` sends a packet's worth per
call and copies the rest of the chunk each time; ``hosts._send_all`` hands it a packet's worth
at a time.
"""
from __future__ import annotations

import argparse
import os
import resource
import time

from benchmarks._sshd import loopback_sshd
from tasks import hosts


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _whole(channel, data: bytes) -> None:
    channel.sendall(data)


def _send(address: str, settings, mb: int, chunk: bytes) -> tuple[float, float]:
    n = (mb << 20) // len(chunk)
    with hosts.SshHost("bench", address, settings) as host:
        host.run(["true"])  # the connection is up before the clock starts
        t0, c0 = time.monotonic(), _cpu()
        host.stream_to(["sh", "-c", "cat >/dev/null"], (chunk for _ in range(n)), timeout=600)
        return time.monotonic() - t0, _cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--chunk-kb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    chunk = os.urandom(args.chunk_kb << 10)
    with loopback_sshd() as (address, settings):
        variants = {"paramiko sendall": _whole, "a packet at a time": hosts._send_all}
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for name, send in variants.items():
                original = hosts._send_all
                hosts._send_all = send  # stream_to sends every chunk through this name
                try:
                    got = _send(address, settings, args.mb, chunk)
                finally:
                    hosts._send_all = original
                if name not in best or got[0] < best[name][0]:
                    best[name] = got
        gb = args.mb / 1024
        base = best["paramiko sendall"]
        print(f"{args.mb} MiB in chunks of {args.chunk_kb} KiB, best of {args.rounds}")
        print(f"{'variant':20} {'s':>6} {'MB/s':>7} {'CPU-s/GB':>9} {'CPU ratio':>9}")
        for name, (secs, cpu) in best.items():
            print(f"{name:20} {secs:6.2f} {args.mb / secs:7.1f} {cpu / gb:9.2f} {cpu / base[1]:9.2f}")


if __name__ == "__main__":
    main()
