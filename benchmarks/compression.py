"""zstd settings for table archives, side by side: CPU per GB, bytes stored, peak memory.

    python -m benchmarks.compression [--mb 256]

SSTables are mostly LZ4-compressed already (Data.db) with compressible index and summary files,
so the input is a mix: 3/4 deflate-compressed text, 1/4 plain text rows. Each variant runs in a
child process (its peak RSS is its own) over the same bytes, streamed in 1 MiB chunks through
``tasks.archive.compress`` as a backup does.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import zlib

import zstandard

VARIANTS = {"level 3, all threads (before)": (3, -1), "level 1, one thread (now)": (1, 0)}


def sample(mb: int) -> bytes:
    rnd = random.Random(7)
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(3, 9)))
             for _ in range(5000)]
    text = b" ".join(rnd.choice(words) for _ in range((mb << 20) // 5))
    plain = text[: (mb << 20) // 4]
    packed = b""
    i = (mb << 20) // 4
    while len(packed) < (mb << 20) * 3 // 4:
        packed += zlib.compress(text[i:i + (1 << 20)] + os.urandom(1 << 16), 1)
        i = (i + (1 << 20)) % max(1, len(text) - (1 << 20))
    return plain + packed[: (mb << 20) * 3 // 4]


def _peak_rss_kib() -> int:
    """VmHWM: this process image's own peak (ru_maxrss would carry the parent's over exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def child(level: int, threads: int, path: str) -> None:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    c = zstandard.ZstdCompressor(level=level, threads=threads).compressobj()
    out = size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            size += len(chunk)
            out += len(c.compress(chunk))
    out += len(c.flush())
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(json.dumps({"seconds": time.monotonic() - t0, "cpu": cpu, "bytes": out, "in": size,
                      "rss_mib": _peak_rss_kib() / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), args.child[2])
        return
    sample_file = tempfile.NamedTemporaryFile(prefix="thb-bench-zstd-", delete=False)
    with sample_file:
        sample_file.write(sample(args.mb))
    print(f"{'variant':32} {'s':>6} {'CPU-s/GB':>9} {'stored %':>9} {'peak RSS MiB':>13}")
    base = None
    for name, (level, threads) in VARIANTS.items():
        out = subprocess.run([sys.executable, "-m", "benchmarks.compression", "--mb", str(args.mb),
                              "--child", str(level), str(threads), sample_file.name], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout)
        base = base or r
        print(f"{name:32} {r['seconds']:6.2f} {r['cpu'] / (r['in'] / 2**30):9.2f} "
              f"{100 * r['bytes'] / r['in']:9.1f} {r['rss_mib']:13.0f}")
    os.unlink(sample_file.name)
    print(f"(input {args.mb} MiB read from a file in 1 MiB chunks, the same bytes for both; peak RSS of "
          "the child: Python and zstandard included)")


if __name__ == "__main__":
    main()
