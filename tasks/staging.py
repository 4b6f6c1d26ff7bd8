"""Staging: every archive a restore needs, extracted and checked on its node before anything live
is touched.

Layout on each node (``staging_dir`` of the stack file)::

    <staging_dir>/thb-restore-<target-key>/
        <archive-key-hash>/<keyspace>/<table>/   the archive's files (BulkLoader reads the last two
                                                  folder names as keyspace and table)
        <archive-key-hash>.staged.json           written after the extraction was checked: the
                                                  archive's SHA-256 and every file with its size

A big table stored component by component goes over ``cassandra.streams_per_table`` streams
at once, each with its share of the components (by bytes) and a repository connection of its
own, all into the same folder, as the backup sent it.

The marker makes staging resumable: a re-run skips an archive whose marker matches and whose files
are all still there (``nodetool import`` moves files out of staging, so a killed load leaves a
marker whose files are gone, and that archive is staged again).
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

from config.model import Stack
from tasks.archive import TarStats, compression_of, decompress, walk_tar
from tasks.content_store import GROUP_BYTES
from tasks.hosts import Host, host_for, write_file
from tasks.manifest import Digest, ObjectEntry, SSTablePart
from tasks.parts_stream import parts_tar
from tasks.repositories import Repository, open_repository
from tasks.retry import side_effect_task


class StagingError(RuntimeError):
    """An archive did not arrive intact in staging."""

    transient = False


def short_hash(text: str, n: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def staging_root(stack: Stack, node: str, target: str) -> str:
    """The node's folder for one restore target (stable across re-runs, so a re-run resumes)."""
    staging_dir = stack.cassandra.settings_for(node).staging_dir
    return posixpath.join(staging_dir, f"thb-restore-{short_hash(target, 8)}")


@dataclass(frozen=True)
class StagedArchive:
    """Where one archive's files wait on one node."""

    archive: ObjectEntry
    node: str
    root: str
    target: str

    @property
    def slot(self) -> str:
        return posixpath.join(self.root, short_hash(self.archive.key))

    @property
    def folder(self) -> str:
        return posixpath.join(self.slot, self.target, self.archive.table or "unknown")

    @property
    def marker(self) -> str:
        return self.slot + ".staged.json"


#: One command per step, each a round trip to the node (~0.1 s through sshd on a busy host):
#: the marker and, if it exists, the files it vouches for (exit 10: no marker) ...
PROBE = 'cat -- "$1" || exit 10; printf "\\0"; exec find "$2" -type f -printf "%P\\t%s\\n"'
#: ... a fresh slot and the extraction into it (stdin: the tar stream) ...
EXTRACT = 'rm -rf -- "$1" "$2" && mkdir -p -- "$3" && exec tar -xf - -C "$3" --no-same-owner'
#: (over several streams: the fresh slot first, then one ``tar -xf`` per stream)
PREPARE = 'rm -rf -- "$1" "$2" && exec mkdir -p -- "$3"'
#: ... and the slot handed to the data folder's owner, then what arrived (its files and sizes).
HAND_OVER = 'chown -R --reference="$1" -- "$2" && exec find "$3" -type f -printf "%P\\t%s\\n"'
LIST = 'exec find "$1" -type f -printf "%P\\t%s\\n"'


def parse_listing(text: str) -> dict[str, int]:
    """``find -printf '%P\\t%s\\n'`` output as {path: size}."""
    files = {}
    for line in text.splitlines():
        path, _, size = line.rpartition("\t")
        files[path] = int(size)
    return files


def parse_probe(exit_code: int, stdout: bytes) -> tuple[dict | None, dict[str, int]]:
    """PROBE's answer: the marker (None: missing or unreadable) and the files found ({} when the
    folder could not be listed)."""
    if exit_code == 10 or b"\0" not in stdout:
        return None, {}
    raw_marker, _, raw_listing = stdout.partition(b"\0")
    try:
        marker = json.loads(raw_marker)
    except ValueError:
        return None, {}
    return (marker if isinstance(marker, dict) else None), (
        parse_listing(raw_listing.decode()) if exit_code == 0 else {})


def staged_files(host: Host, staged: StagedArchive) -> dict[str, int] | None:
    """The files a previous run left complete in staging for this archive, or None."""
    out = host.run(host.privileged(["sh", "-c", PROBE, "sh", staged.marker, staged.folder]),
                   timeout=600, check=False)
    marker, found = parse_probe(out.exit_code, out.stdout)
    if not marker or marker.get("sha256") != staged.archive.sha256 or found != marker.get("files"):
        return None
    return found


def count_sstables(files: dict[str, int]) -> int:
    """SSTables among staged files (what ``nodetool import`` would adopt)."""
    return sum(1 for path in files if path.endswith("-Data.db"))


def stage(host: Host, repo: Repository, staged: StagedArchive, owner_of: str | None = None, *,
          streams: int = 1, open_repo: Callable[[], Repository] | None = None) -> dict:
    """Extract one archive into its staging folder (unsafe members refused on the way), check
    that every file arrived with its size, hand the slot to the owner of ``owner_of`` (the
    Cassandra data folder: ``nodetool import`` moves the files as Cassandra's user), then write
    the marker. Four commands on the node: probe, extract, hand over and list, marker.

    ``streams`` > 1 with ``open_repo``: a big table's components go over that many streams."""
    if (files := staged_files(host, staged)) is not None:
        return {"node": staged.node, "key": staged.archive.key, "files": None, "resumed": True,
                "sstables": count_sstables(files)}
    stats = TarStats(digests=False)  # file sizes are compared below
    extract = host.privileged(["sh", "-c", EXTRACT, "sh", staged.slot, staged.marker, staged.folder])
    parts = staged.archive.parts
    shares = share_out(parts, streams if open_repo is not None else 1) if parts is not None else []
    if len(shares) > 1 and open_repo is not None:
        _stage_shares(host, repo, open_repo, staged, shares, stats)
    elif parts is not None:  # incremental mode: the components, framed as one tar
        # each checked against its size and content name as it passes (tasks/parts_stream.py)
        host.stream_to(extract, walk_tar(parts_tar(repo, parts), stats, check=True), timeout=600)
    else:
        _stage_archive(host, repo, staged.archive, extract, stats)
    expected = dict(stats.sizes)
    argv = (["sh", "-c", HAND_OVER, "sh", owner_of, staged.slot, staged.folder] if owner_of is not None
            else ["sh", "-c", LIST, "sh", staged.folder])
    found = parse_listing(host.run(host.privileged(argv), timeout=600).text)
    if found != expected:
        missing = sorted(set(expected) - set(found))
        wrong = sorted(p for p in expected if p in found and found[p] != expected[p])
        raise StagingError(f"{staged.node}: {staged.archive.key} staged in {staged.folder} does not "
                           f"match the archive (missing {missing[:5]}, wrong size {wrong[:5]})")
    body = json.dumps({"key": staged.archive.key, "sha256": staged.archive.sha256,
                       "files": expected}).encode()
    write_file(host, staged.marker, body)
    return {"node": staged.node, "key": staged.archive.key, "files": len(expected), "resumed": False,
            "sstables": count_sstables(expected)}


def share_out(parts: list[SSTablePart], streams: int) -> list[list[SSTablePart]]:
    """The components in at most ``streams`` shares of about equal bytes (the biggest into the
    lightest share), each in listing order; one stream per ``GROUP_BYTES`` at most, as the
    backup sends them (a small table is not worth a second connection)."""
    total = sum(p.size for p in parts)
    n = max(1, min(streams, -(-total // GROUP_BYTES), len(parts)))
    shares: list[list[int]] = [[] for _ in range(n)]
    load = [0] * n
    for i in sorted(range(len(parts)), key=lambda i: -parts[i].size):
        lightest = load.index(min(load))
        shares[lightest].append(i)
        load[lightest] += parts[i].size
    return [[parts[i] for i in sorted(share)] for share in shares if share]


class _Stopped(StagingError):
    """Another stream of the same table failed: this one stops at its next chunk."""


def _unless(failed: threading.Event, chunks: Iterable[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        if failed.is_set():
            raise _Stopped("stopped: another stream of the table failed")
        yield chunk


def _stage_shares(host: Host, repo: Repository, open_repo: Callable[[], Repository],
                  staged: StagedArchive, shares: list[list[SSTablePart]], stats: TarStats) -> None:
    """A fresh slot, then one ``tar -xf`` into its folder per share, at once, each share read
    through a repository connection of its own (SFTP and S3 clients are not shared between
    threads); the first failure stops the others and is raised."""
    host.run(host.privileged(["sh", "-c", PREPARE, "sh", staged.slot, staged.marker, staged.folder]), timeout=600)
    untar = host.privileged(["tar", "-xf", "-", "-C", staged.folder, "--no-same-owner"])
    failed = threading.Event()

    def send(share: list[SSTablePart], own_connection: bool) -> TarStats:
        got = TarStats(digests=False)
        try:
            with open_repo() if own_connection else nullcontext(repo) as r:
                host.stream_to(untar, _unless(failed, walk_tar(parts_tar(r, share), got, check=True)),
                               timeout=600)
        except BaseException:
            failed.set()
            raise
        return got

    with ThreadPoolExecutor(len(shares)) as pool:
        futures = [pool.submit(send, share, i > 0) for i, share in enumerate(shares)]
    errors = [exc for f in futures if (exc := f.exception()) is not None]
    if errors:
        raise next((e for e in errors if not isinstance(e, _Stopped)), errors[0])
    for f in futures:
        got = f.result()
        stats.files += got.files
        stats.raw_size += got.raw_size
        stats.sizes.update(got.sizes)


def _stage_archive(host: Host, repo: Repository, archive: ObjectEntry, extract: list[str],
                   stats: TarStats) -> None:
    """Extract an archive, hashing its stored bytes on the way: staging is what proves the
    archives a restore loads (the checks do not read them a second time)."""
    digest = Digest()
    with repo.get(archive.key) as chunks:
        raw = digest.through(chunks)
        host.stream_to(extract, walk_tar(decompress(raw, compression_of(archive.key)), stats, check=True),
                       timeout=600)
        for _ in raw:  # whatever follows the archive's end blocks
            pass
    if digest.size != archive.size or digest.sha256 != archive.sha256:
        raise StagingError(f"{archive.key}: SHA-256 mismatch (stored {digest.sha256[:16]}… in "
                           f"{digest.size} bytes, manifest {archive.sha256[:16]}… in {archive.size})")


def remove_staging(stack: Stack, node: str, target: str) -> None:
    with host_for(stack, node) as host:
        host.run(host.privileged(["rm", "-rf", "--", staging_root(stack, node, target)]), timeout=1800)


@side_effect_task(name="stage table",
                  task_run_name="stage {staged.archive.node}/{staged.archive.table} on {staged.node}")
def stage_task(stack: Stack, staged: StagedArchive) -> dict:
    with open_repository(stack) as repo, host_for(stack, staged.node) as host:
        return stage(host, repo, staged, owner_of=stack.cassandra.settings_for(staged.node).data_dirs[0],
                     streams=stack.cassandra.streams_per_table, open_repo=lambda: open_repository(stack))
