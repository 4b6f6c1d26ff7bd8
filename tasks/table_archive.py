"""One table's snapshot folder streamed into the repository, and the SSTable fingerprint of it.

Two ideas that live where the stream is read:

- **"file changed as we read it"**: GNU tar exits 1 with that warning when a file's ctime moved
  while it was read. A snapshot's files are hard links that nothing rewrites, but a compaction
  removing the live file, or another snapshot being cleared, changes their link count and so
  their ctime. The stream is then sent again (``attempts`` in all); every other tar error, and
  that warning mixed with any other message, fails at once. The repository write is atomic, so
  a stream given up leaves nothing under the key.
- **The SSTable fingerprint**: a cheap, name-independent identity of a table's content on one
  node, ``sha256`` of the sorted lines ``"<Data.db size> <Digest.crc32 content>"``, one per
  SSTable. Both are read from the stream already passing by; on a live node the same lines come
  from ``stat`` and ``cat`` of small files (``tasks/digests.py``), without reading any row. A
  re-import keeps it (file names change, contents do not); a flush or a compaction changes it.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tasks.archive import Compression, TarStats, pack
from tasks.hosts import CommandFailed, Host
from tasks.repositories import Repository
from tasks.transfer import Stored, store

log = logging.getLogger(__name__)

#: GNU tar's warning for a file whose ctime (or size) moved while it was read.
FILE_CHANGED = re.compile(r"^(?:\S*tar: )?.+: file changed as we read it$")
DATA, DIGEST = "-Data.db", "-Digest.crc32"


def tar_command(path: str, tar: Sequence[str] = ("tar",)) -> list[str]:
    """The node-side half of a table archive: the folder's contents at the archive root."""
    return [*tar, "--format=pax", "-C", path, "-cf", "-", "."]


def only_file_changed(exc: BaseException) -> bool:
    """tar exited 1 and said nothing but "file changed as we read it"; ``exc`` may be the
    CommandFailed itself or a repository error raised because of it (S3 wraps its reader's)."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, CommandFailed):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return False
    lines = [line for line in seen.stderr.splitlines() if line.strip()]
    return seen.exit_code == 1 and bool(lines) and all(FILE_CHANGED.match(line) for line in lines)


def _is_digest_file(name: str) -> bool:
    return "/" not in name and name.endswith(DIGEST)


def fingerprint_lines(lines: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def sstable_lines(stats: TarStats) -> list[str]:
    """One ``"<Data.db size> <crc32>"`` line per SSTable at the top of the archive
    (``-`` when the SSTable has no Digest.crc32)."""
    lines = []
    for entry in stats.entries:
        if "/" in entry.path or not entry.path.endswith(DATA):
            continue
        crc = stats.kept.get(entry.path[: -len(DATA)] + DIGEST, b"-").decode(errors="replace").strip()
        lines.append(f"{entry.size} {crc or '-'}")
    return lines


@dataclass(frozen=True)
class StreamedTable:
    stored: Stored
    stats: TarStats
    attempts: int  # 1 when the first stream went through

    @property
    def sstables(self) -> int:
        return len(sstable_lines(self.stats))

    @property
    def fingerprint(self) -> str:
        return fingerprint_lines(sstable_lines(self.stats))


def stream_table(host: Host, repo: Repository, key: str, path: str, compression: Compression, *,
                 attempts: int = 3, tar: Sequence[str] = ("tar",)) -> StreamedTable:
    """Stream the snapshot folder ``path`` on ``host`` into ``repo`` under ``key``; sent again
    when tar only reported a file changed while read (module docstring)."""
    for attempt in range(1, attempts + 1):
        stats = TarStats(keep=_is_digest_file)
        try:
            with host.stream_from(host.privileged(tar_command(path, tar))) as chunks:
                stored = store(repo, key, pack(chunks, compression, stats, inventory=True))
            return StreamedTable(stored, stats, attempt)
        except Exception as exc:
            if attempt == attempts or not only_file_changed(exc):
                raise
            log.warning("%s: tar: a file changed as we read it (attempt %d of %d); streaming %s "
                        "again", host.name, attempt, attempts, path)
    raise AssertionError("unreachable")
