"""CPU and time per GiB of a Host's streams: over paramiko, and over the OpenSSH client.

    python -m benchmarks.ssh_transports [--mb 1024] [--rounds 3]

Starts the harness's real sshd on 127.0.5.x (never a test stack's /24) and moves ``--mb`` MiB
each way through ``SshHost``: ``stream_from`` reading ``head -c`` of /dev/zero (a backup's
direction) and ``stream_to`` feeding ``cat >/dev/null`` in 1 MiB chunks (a restore's), with
``openssh_streams`` off and on, alternated in one run. Prints the best of ``--rounds`` for each:
seconds, MiB/s, the runner's CPU seconds per GiB (this process, its children, and the OpenSSH
master connection, which does the crypto for the sessions; sshd's are apart), and how many of
them this process's own threads took (the share that holds the GIL against the run's other work).
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import time

from benchmarks._sshd import loopback_sshd
from tasks import hosts


def _cpu() -> tuple[float, float]:
    """(this process, its reaped children) CPU seconds."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def _master_cpu(host: hosts.SshHost) -> float:
    """CPU seconds of the host's OpenSSH master so far (0 without one): not our child, so not in
    RUSAGE_CHILDREN."""
    streams = host._streams
    if streams is None:
        return 0.0
    check = subprocess.run([*streams.base, "-O", "check", "--", host.address], capture_output=True, text=True)
    pid = re.search(r"pid=(\d+)", check.stderr)
    if pid is None:
        raise RuntimeError(f"no OpenSSH master: {check.stderr}")
    with open(f"/proc/{pid.group(1)}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(address: str, settings, direction: str, mb: int) -> tuple[float, float, float]:
    chunk = bytes(1 << 20)
    with hosts.SshHost("bench", address, settings) as host:
        host.run(["true"])  # the connection is up before the clock starts
        with host.stream_from(["true"]) as warm:  # and the OpenSSH master, where used
            list(warm)
        t0, (own0, kids0), master0 = time.monotonic(), _cpu(), _master_cpu(host)
        if direction == "from node":
            with host.stream_from(["head", "-c", str(mb << 20), "/dev/zero"], timeout=600) as chunks:
                got = sum(len(c) for c in chunks)
            assert got == mb << 20, got
        else:
            host.stream_to(["sh", "-c", "cat >/dev/null"], (chunk for _ in range(mb)), timeout=600)
        secs = time.monotonic() - t0
        (own1, kids1), master1 = _cpu(), _master_cpu(host)
    return secs, own1 - own0, kids1 - kids0 + master1 - master0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    with loopback_sshd() as (address, ssh):
        best: dict[tuple[str, str], tuple[float, float, float]] = {}
        for _ in range(args.rounds):
            for direction in ("from node", "to node"):
                for transport in ("paramiko", "openssh"):
                    settings = ssh.model_copy(update={"openssh_streams": transport == "openssh"})
                    got = _measure(address, settings, direction, args.mb)
                    key = (direction, transport)
                    if key not in best or got[0] < best[key][0]:
                        best[key] = got
    gib = args.mb / 1024
    print(f"{args.mb} MiB each way, best of {args.rounds}")
    print(f"{'direction':10} {'transport':9} {'s':>6} {'MiB/s':>7} {'CPU-s/GiB':>9} "
          f"{'in-process':>10} {'CPU ratio':>9}")
    for (direction, transport), (secs, own, kids) in best.items():
        base = sum(best[(direction, "paramiko")][1:])
        print(f"{direction:10} {transport:9} {secs:6.2f} {args.mb / secs:7.1f} {(own + kids) / gib:9.2f} "
              f"{own / gib:10.2f} {(own + kids) / base:9.2f}")


if __name__ == "__main__":
    main()
