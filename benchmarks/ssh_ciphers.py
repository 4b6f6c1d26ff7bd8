"""CPU and time per GB streamed over SSH: paramiko's default cipher against AES-GCM first.

    python -m benchmarks.ssh_ciphers [--mb 512] [--rounds 3]

Starts the harness's real sshd on 127.0.5.x (never a test stack's /24), streams ``--mb`` MiB of
zeros from ``head -c`` on the far side through ``SshHost.stream_from`` (as a table archive is
read), alternating the two cipher orders in one run, and prints the best of ``--rounds`` for each:
seconds, MB/s and this process's CPU seconds per GB (the flow runner's cost; sshd's is apart).
"""
from __future__ import annotations

import argparse
import resource
import time

import paramiko

from benchmarks._sshd import loopback_sshd
from tasks import hosts


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _stream(address: str, settings, mb: int) -> tuple[float, float, str]:
    t0, c0 = time.monotonic(), _cpu()
    with hosts.SshHost("bench", address, settings) as host:
        with host.stream_from(["head", "-c", str(mb << 20), "/dev/zero"]) as chunks:
            n = sum(len(c) for c in chunks)
        cipher = host._client.get_transport().local_cipher
    assert n == mb << 20
    return time.monotonic() - t0, _cpu() - c0, cipher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with loopback_sshd() as (address, settings):
        variants = {"paramiko default": paramiko.Transport, "AES-GCM first": hosts._NodeTransport}
        best: dict[str, tuple[float, float, str]] = {}
        for _ in range(args.rounds):
            for name, factory in variants.items():
                original = hosts._NodeTransport
                hosts._NodeTransport = factory  # connect_ssh picks the transport class by this name
                try:
                    got = _stream(address, settings, args.mb)
                finally:
                    hosts._NodeTransport = original
                if name not in best or got[0] < best[name][0]:
                    best[name] = got
        gb = args.mb / 1024
        base = best["paramiko default"]
        print(f"{'variant':18} {'cipher':24} {'s':>6} {'MB/s':>7} {'CPU-s/GB':>9} {'CPU ratio':>9}")
        for name, (secs, cpu, cipher) in best.items():
            print(f"{name:18} {cipher:24} {secs:6.2f} {args.mb / secs:7.1f} {cpu / gb:9.2f} "
                  f"{cpu / base[1]:9.2f}")


if __name__ == "__main__":
    main()
