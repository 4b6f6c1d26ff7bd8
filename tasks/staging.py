"""Staging: every archive a restore needs, extracted and checked on its node before anything live
is touched.

Layout on each node (``staging_dir`` of the stack file)::

    <staging_dir>/thb-restore-<target-key>/
        <archive-key-hash>/<keyspace>/<table>/   the archive's files (BulkLoader reads the last two
                                                  folder names as keyspace and table)
        <archive-key-hash>.staged.json           written after the extraction was checked: the
                                                  archive's SHA-256 and every file with its size

The marker makes staging resumable: a re-run skips an archive whose marker matches and whose files
are all still there (``nodetool import`` moves files out of staging, so a killed load leaves a
marker whose files are gone, and that archive is staged again).
"""
from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass

from config.model import Stack
from tasks.archive import TarStats, compression_of, decompress, walk_tar
from tasks.hosts import Host, host_for, write_file
from tasks.manifest import ObjectEntry
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


def listing(host: Host, folder: str) -> dict[str, int]:
    """Every regular file under ``folder`` with its size; {} when the folder is missing."""
    out = host.run(host.privileged(["find", folder, "-type", "f", "-printf", "%P\\t%s\\n"]), timeout=600, check=False)
    if out.exit_code != 0:
        return {}
    files = {}
    for line in out.text.splitlines():
        path, _, size = line.rpartition("\t")
        files[path] = int(size)
    return files


def read_marker(host: Host, marker: str) -> dict | None:
    out = host.run(host.privileged(["cat", "--", marker]), timeout=60, check=False)
    if out.exit_code != 0:
        return None
    try:
        return json.loads(out.stdout)
    except ValueError:
        return None


def is_staged(host: Host, staged: StagedArchive) -> bool:
    """True when a previous run left this archive complete in staging."""
    marker = read_marker(host, staged.marker)
    if not marker or marker.get("sha256") != staged.archive.sha256:
        return False
    return listing(host, staged.folder) == marker.get("files")


def stage(host: Host, repo: Repository, staged: StagedArchive, owner_of: str | None = None) -> dict:
    """Extract one archive into its staging folder (unsafe members refused on the way), check
    that every file arrived with its size, hand the slot to the owner of ``owner_of`` (the
    Cassandra data folder: ``nodetool import`` moves the files as Cassandra's user), then write
    the marker."""
    if is_staged(host, staged):
        return {"node": staged.node, "key": staged.archive.key, "files": None, "resumed": True}
    host.run(host.privileged(["rm", "-rf", "--", staged.slot, staged.marker]), timeout=600)
    host.run(host.privileged(["mkdir", "-p", "--", staged.folder]), timeout=60)
    stats = TarStats()
    extract = host.privileged(["tar", "-xf", "-", "-C", staged.folder, "--no-same-owner"])
    if staged.archive.parts is not None:  # incremental mode: the components, framed as one tar
        host.stream_to(extract, walk_tar(parts_tar(repo, staged.archive), stats, inventory=True,
                                         check=True), timeout=600)
    else:
        kind = compression_of(staged.archive.key)
        with repo.get(staged.archive.key) as chunks:
            stream = walk_tar(decompress(chunks, kind), stats, inventory=True, check=True)
            host.stream_to(extract, stream, timeout=600)
    expected = {e.path: e.size for e in stats.entries if e.sha256 is not None}
    found = listing(host, staged.folder)
    if found != expected:
        missing = sorted(set(expected) - set(found))
        wrong = sorted(p for p in expected if p in found and found[p] != expected[p])
        raise StagingError(f"{staged.node}: {staged.archive.key} staged in {staged.folder} does not "
                           f"match the archive (missing {missing[:5]}, wrong size {wrong[:5]})")
    if owner_of is not None:
        host.run(host.privileged(["chown", "-R", f"--reference={owner_of}", "--", staged.slot]), timeout=600)
    body = json.dumps({"key": staged.archive.key, "sha256": staged.archive.sha256,
                       "files": expected}).encode()
    write_file(host, staged.marker, body)
    return {"node": staged.node, "key": staged.archive.key, "files": len(expected), "resumed": False}


def remove_staging(stack: Stack, node: str, target: str) -> None:
    with host_for(stack, node) as host:
        host.run(host.privileged(["rm", "-rf", "--", staging_root(stack, node, target)]), timeout=1800)


@side_effect_task(name="stage table",
                  task_run_name="stage {staged.archive.node}/{staged.archive.table} on {staged.node}")
def stage_task(stack: Stack, staged: StagedArchive) -> dict:
    with open_repository(stack) as repo, host_for(stack, staged.node) as host:
        return stage(host, repo, staged, owner_of=stack.cassandra.settings_for(staged.node).data_dirs[0])
