"""The node side of a cold restore: look at a target folder, move it aside, extract an archive into
it, re-hash what was extracted, and put everything back when the restore does not complete.

Why a journal: a cold restore changes live folders, so every change must be undoable by the same
code whether the flow fails, is cancelled, crashes or is killed. Before the first folder is moved,
``<path>.restoring-<backup-id>.json`` is written beside each target on its node with what the
folder was (missing, empty, non-empty and moved to ``<path>.before-<backup-id>``) and its owner and
mode. ``put_back`` needs nothing but that journal; it is removed once the restore is complete (or
rolled back), so a journal left on a node always means "this folder is mid-restore".

Nothing here deletes anything that was in a folder before the restore: only what the restore
extracted into a folder that was empty, missing or moved aside.

``folder_state`` and ``move_aside`` live here, not in tasks/folders.py (the backup side), because
``put_back`` is their inverse: the same ``.before-`` name, the same mount-point handling, the same
journal phases. A node rebuild that moves a folder aside uses them from here.
"""
from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from config.model import Stack
from tasks import layout
from tasks.archive import TarStats, compression_of, unpack
from tasks.hosts import Host, host_for
from tasks.repositories import Repository, open_repository
from tasks.retry import side_effect_task
from tasks.services import ServiceError, event

FolderState = Literal["missing", "empty", "non-empty", "not-a-folder"]
Phase = Literal["planned", "moved", "complete"]


def folder_state(host: Host, path: str) -> FolderState:
    if not _exists(host, path):
        return "missing"
    if host.run(host.privileged(["test", "-d", path]), timeout=60, check=False).exit_code != 0:
        return "not-a-folder"
    r = host.run(host.privileged(["find", path, "-mindepth", "1", "-maxdepth", "1", "-print", "-quit"]), timeout=300)
    return "non-empty" if r.text.strip() else "empty"


def aside_path(path: str, backup_id: str) -> str:
    return f"{path.rstrip('/')}.before-{backup_id}"


def journal_path(path: str, backup_id: str) -> str:
    return f"{path.rstrip('/')}.restoring-{backup_id}.json"


def _exists(host: Host, path: str) -> bool:
    return host.run(host.privileged(["test", "-e", path]), timeout=60, check=False).exit_code == 0


# -- the journal -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Journal:
    """One target folder of a cold restore: what it was, and how far the restore got with it."""

    backup_id: str
    node: str
    path: str
    before: FolderState  # missing, empty or non-empty (then moved to ``aside``)
    aside: str | None
    owner_mode: str | None  # "uid:gid:octal-mode" of the folder itself, when it existed
    phase: Phase = "planned"

    @property
    def where(self) -> str:
        return journal_path(self.path, self.backup_id)


def plan_folder(stack: Stack, node: str, path: str, backup_id: str, wipe: bool) -> Journal | str:
    """The journal the restore will write for one target, or why the target is refused."""
    with host_for(stack, node) as host:
        state = folder_state(host, path)
        if state == "not-a-folder":
            return f"{node}:{path} exists and is not a folder"
        aside = aside_path(path, backup_id) if state == "non-empty" else None
        if aside and not wipe:
            return f"{node}:{path} is not empty (wipe=True moves it to {aside})"
        if aside and _exists(host, aside):
            return f"{node}:{aside} already exists; move it away first"
        owner_mode = None
        if state != "missing":
            owner_mode = host.run(host.privileged(["stat", "-c", "%u:%g:%a", "--", path]), timeout=60).text.strip()
    return Journal(backup_id, node, path, state, aside, owner_mode)


def write_journal(stack: Stack, journal: Journal) -> None:
    """Write (or advance) a folder's journal on its node: temp file, then rename."""
    body = json.dumps(asdict(journal), indent=1).encode()
    tmp = journal.where + ".tmp"
    with host_for(stack, journal.node) as host:
        host.run(host.privileged(["tee", "--", tmp]), stdin=body, timeout=60)
        host.run(host.privileged(["mv", "-T", "--", tmp, journal.where]), timeout=60)


def read_journal(stack: Stack, node: str, path: str, backup_id: str) -> Journal | None:
    where = journal_path(path, backup_id)
    with host_for(stack, node) as host:
        if not _exists(host, where):
            return None
        data = json.loads(host.run(host.privileged(["cat", "--", where]), timeout=60).stdout)
    return Journal(**data)


def remove_journal(stack: Stack, journal: Journal) -> None:
    with host_for(stack, journal.node) as host:
        host.run(host.privileged(["rm", "-f", "--", journal.where]), timeout=60)


# -- acting ------------------------------------------------------------------------------------------
def move_aside(stack: Stack, node: str, path: str, backup_id: str) -> str:
    """Move the folder's current contents to ``<path>.before-<backup-id>``; never delete."""
    dest = aside_path(path, backup_id)
    with host_for(stack, node) as host:
        if _exists(host, dest):
            raise ServiceError(f"{node}: {dest} already exists; move it away first")
        if host.run(host.privileged(["mv", "-T", "--", path, dest]), timeout=600, check=False).exit_code != 0:
            # A mount point cannot be renamed: move what it holds instead.
            host.run(host.privileged(["mkdir", "--", dest]), timeout=60)
            _move_contents(host, path, dest)
    return dest


def _move_contents(host: Host, src: str, dst: str) -> None:
    host.run(host.privileged(["find", src, "-mindepth", "1", "-maxdepth", "1",
              "-exec", "mv", "-t", dst, "--", "{}", "+"]), timeout=3600)


def _empty(host: Host, path: str) -> None:
    host.run(host.privileged(["find", path, "-mindepth", "1", "-maxdepth", "1",
              "-exec", "rm", "-rf", "--", "{}", "+"]), timeout=3600)


def extract_argv(path: str) -> list[str]:
    """The node-side half of a restore: owner and mode as archived (tar runs as root)."""
    return ["tar", "--same-owner", "-xpf", "-", "-C", path]


def rehash_argv(path: str) -> list[str]:
    return ["find", path, "-type", "f", "-exec", "sha256sum", "--", "{}", "+"]


def parse_sha256sum(lines: Iterable[str], root: str) -> dict[str, str]:
    """``sha256sum`` output of files under ``root`` → {path relative to root: sha256}.

    A name holding a backslash or a newline is printed escaped, with a leading backslash.
    """
    prefix = root.rstrip("/") + "/"
    out = {}
    for line in lines:
        if not line:
            continue
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        digest, name = line[:64], line[66:]
        if escaped:
            name = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m[1], m[1]), name)
        if not name.startswith(prefix):
            raise ServiceError(f"sha256sum printed {name!r}, outside {root}")
        out[posixpath.normpath(name[len(prefix):])] = digest
    return out


def inventory_files(body: bytes) -> dict[str, str | None]:
    """{path: sha256 (None for folders and links)} from a cold backup's ``.inventory.json``."""
    data = json.loads(body)
    return {posixpath.normpath(e["path"]): e["sha256"] for e in data["files"]}


def inventory_problems(expected: dict[str, str | None], found: dict[str, str], where: str) -> list[str]:
    """Every file of the inventory on disk with its hash, and no file the inventory lacks (a
    hard link is listed without a hash and found as a file: accepted)."""
    problems = []
    for p, digest in sorted(expected.items()):
        if digest is None:
            continue
        if p not in found:
            problems.append(f"{where}/{p}: missing after extraction")
        elif found[p] != digest:
            problems.append(f"{where}/{p}: SHA-256 {found[p][:16]}… on disk, inventory {digest[:16]}…")
    problems += [f"{where}/{p}: on disk, not in the inventory" for p in sorted(set(found) - set(expected))]
    return problems


def rehash(host: Host, path: str) -> dict[str, str]:
    """Hash every regular file under ``path`` on the node itself."""
    lines: list[str] = []
    tail = b""
    with host.stream_from(host.privileged(rehash_argv(path)), timeout=3600) as chunks:
        for chunk in chunks:
            *complete, tail = (tail + chunk).split(b"\n")
            lines += [c.decode("utf-8", "surrogateescape") for c in complete]
    lines.append(tail.decode("utf-8", "surrogateescape"))
    return parse_sha256sum(lines, path)


def extract_path(stack: Stack, repo: Repository, node: str, key: str, path: str,
                 expected_files: int | None, inventory_key: str | None = None) -> list[dict]:
    """Stream an archive from the repository into ``path`` on ``node`` (member by member checked),
    then, with an inventory, hash every file on the node and compare: any difference raises."""
    service = layout.cold_service_of(key)
    events = [event("extract", service, node, key=key, path=path)]
    stats = TarStats()
    with host_for(stack, node) as host:
        host.run(host.privileged(["mkdir", "-p", "--", path]), timeout=60)
        with repo.get(key) as chunks:
            host.stream_to(host.privileged(extract_argv(path)), unpack(chunks, compression_of(key), stats), timeout=600)
        if expected_files is not None and stats.files != expected_files:
            raise ServiceError(f"{key}: extracted {stats.files} files, the manifest lists {expected_files}")
        if inventory_key is not None:
            expected = inventory_files(repo.get_bytes(inventory_key))
            problems = inventory_problems(expected, rehash(host, path), f"{node}:{path.rstrip('/')}")
            if problems:
                more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
                raise ServiceError(f"{key}: extracted files differ from the inventory: "
                                   + "; ".join(problems[:10]) + more)
    events.append(event("extracted", service, node, key=key, files=stats.files,
                        rehashed=inventory_key is not None))
    return events


def put_back(stack: Stack, journal: Journal) -> str:
    """Undo one folder's restore from its journal, whatever phase it reached; idempotent.

    Only what the restore put there is removed: a folder that was missing is removed, one that was
    empty is emptied, one that was moved aside is emptied and its previous contents moved back
    (the folder renamed back, or its contents moved when it is a mount point). Owner and mode of
    the folder itself are set back. Returns what was done; raises if it could not be done.
    """
    j = journal
    aside = j.aside or ""  # set whenever there were contents to move aside
    with host_for(stack, j.node) as host:
        if j.before == "missing":
            host.run(host.privileged(["rm", "-rf", "--", j.path]), timeout=3600)
            done = "removed (was missing)"
        elif j.before == "empty":
            if _exists(host, j.path):
                _empty(host, j.path)
            else:
                host.run(host.privileged(["mkdir", "-p", "--", j.path]), timeout=60)
            done = "emptied (was empty)"
        elif not _exists(host, aside):
            done = "untouched (was never moved aside)"  # or already put back
        elif j.phase == "planned" and _exists(host, j.path):
            # Interrupted while its contents were being moved aside (a mount point): nothing was
            # extracted yet, so what is still in the folder is original; bring the rest back.
            _move_contents(host, aside, j.path)
            host.run(host.privileged(["rmdir", "--", aside]), timeout=60)
            done = f"previous contents moved back from {aside}"
        else:
            if _exists(host, j.path):
                _empty(host, j.path)
                host.run(host.privileged(["rmdir", "--", j.path]), timeout=60, check=False)  # fails on a mount point
            if _exists(host, j.path):
                _move_contents(host, aside, j.path)
                host.run(host.privileged(["rmdir", "--", aside]), timeout=60)
            else:
                host.run(host.privileged(["mv", "-T", "--", aside, j.path]), timeout=600)
            done = f"previous contents moved back from {j.aside}"
        if j.owner_mode:
            uid, gid, mode = j.owner_mode.split(":")
            host.run(host.privileged(["chown", f"{uid}:{gid}", "--", j.path]), timeout=60)
            host.run(host.privileged(["chmod", mode, "--", j.path]), timeout=60)
        host.run(host.privileged(["rm", "-f", "--", j.where]), timeout=60)
    return f"{j.node}:{j.path}: {done}"


def advance(journal: Journal, phase: Phase) -> Journal:
    return replace(journal, phase=phase)


# -- Prefect tasks -----------------------------------------------------------------------------------
@task(name="plan folder", task_run_name="plan {node}:{path}", cache_policy=NO_CACHE)
def plan_folder_task(stack: Stack, node: str, path: str, backup_id: str, wipe: bool) -> Journal | str:
    return plan_folder(stack, node, path, backup_id, wipe)


@side_effect_task(name="extract folder", task_run_name="extract {key} on {node}", retry=False)
def extract_path_task(stack: Stack, node: str, key: str, path: str, expected_files: int | None,
                      inventory_key: str | None = None) -> list[dict]:
    with open_repository(stack) as repo:
        return extract_path(stack, repo, node, key, path, expected_files, inventory_key)


@side_effect_task(name="put folder back", task_run_name="put back {journal.node}:{journal.path}",
                  retry=False)
def put_back_task(stack: Stack, journal: Journal) -> str:
    return put_back(stack, journal)
