"""The cost of client-side encryption, side by side: a local repository plain and through
``EncryptingRepository`` (AES-256-GCM, 64 KiB chunks), put and get, CPU per GB and MB/s.

    python -m benchmarks.encryption [--mb 256] [--rounds 2]

Each variant runs in a child process (its CPU time and peak RSS are its own) over the same bytes,
streamed in 1 MiB chunks as a backup streams an archive, into a temporary folder (page cache: the
disk is out of the figures as far as it can be). The best round of each is shown.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

PIECE = 1 << 20


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(encrypted: bool, mb: int, rounds: int, folder: str) -> None:
    from tasks.repositories.crypto import Keyring, MasterKey
    from tasks.repositories.encrypting import EncryptingRepository
    from tasks.repositories.local import LocalRepository

    repo = LocalRepository(folder)
    if encrypted:
        repo = EncryptingRepository(repo, Keyring(MasterKey.from_bytes(os.urandom(32), "key")))
    piece = os.urandom(PIECE)
    best: dict[str, dict] = {}
    for i in range(rounds):
        key = f"bench-{i}/cassandra/n1/ks/t-0.tar.zst"
        for op in ("put", "get"):
            c0, t0 = _cpu(), time.monotonic()
            if op == "put":
                n = repo.put(key, (piece for _ in range(mb)))
            else:
                n = 0
                with repo.get(key) as chunks:
                    for chunk in chunks:
                        n += len(chunk)
            seconds, cpu = time.monotonic() - t0, _cpu() - c0
            assert n == mb * PIECE, (op, n)
            if op not in best or seconds < best[op]["seconds"]:
                best[op] = {"seconds": seconds, "cpu": cpu}
        repo.delete(key)
    stored = mb * PIECE
    if encrypted:
        from tasks.repositories.crypto import stored_size
        stored = stored_size(mb * PIECE)
    print(json.dumps({"best": best, "bytes": mb * PIECE, "stored": stored, "rss_mib": _peak_rss_kib() / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", choices=["plain", "encrypted"])
    ap.add_argument("--folder")
    args = ap.parse_args()
    if args.child:
        child(args.child == "encrypted", args.mb, args.rounds, args.folder)
        return
    print(f"{'variant':12} {'op':4} {'s':>7} {'MB/s':>8} {'CPU-s/GB':>9} {'stored/plain':>13} {'peak RSS MiB':>13}")
    for variant in ("plain", "encrypted"):
        with tempfile.TemporaryDirectory(prefix="thb-bench-crypt-") as folder:
            out = subprocess.run([sys.executable, "-m", "benchmarks.encryption", "--mb", str(args.mb),
                                  "--rounds", str(args.rounds), "--child", variant, "--folder", folder],
                                 capture_output=True, text=True, check=True)
        r = json.loads(out.stdout)
        gb = r["bytes"] / 2**30
        for op, m in r["best"].items():
            print(f"{variant:12} {op:4} {m['seconds']:7.2f} {r['bytes'] / 1e6 / m['seconds']:8.0f} "
                  f"{m['cpu'] / gb:9.2f} {r['stored'] / r['bytes']:13.5f} {r['rss_mib']:13.0f}")
    print(f"({args.mb} MiB of random bytes in 1 MiB pieces, local repository in a temporary folder, best of "
          f"{args.rounds} rounds; MB = 10^6 bytes; CPU = user + system of the child process)")


if __name__ == "__main__":
    main()
