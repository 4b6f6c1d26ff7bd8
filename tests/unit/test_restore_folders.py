"""tasks/restore_folders.py on local nodes: move aside, extract, re-hash against the inventory,
and put back from the journal in every phase a restore can stop in."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tasks import folders as cold_folders
from tasks import restore_folders as folders
from tasks.hosts import LocalHost
from tasks.repositories.local import LocalRepository
from tasks.services import ServiceError
from tests.unit.test_services import stack_of

CMD = {"kind": "command", "start": ["s"], "stop": ["s"], "status": ["s"]}


def local_stack(tmp_path):
    return stack_of(tmp_path, {"thehive": CMD, "elasticsearch": CMD, "cassandra": CMD})


def tree(root: Path) -> dict:
    """Every entry under root with its content (files), mode, and the root's own mode."""
    out = {".": oct(root.stat().st_mode & 0o7777)}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = (p.read_bytes() if p.is_file() else None,
                                         oct(p.stat().st_mode & 0o7777))
    return out


def test_move_aside_never_deletes_and_refuses_to_overwrite(tmp_path):
    cmd = {"kind": "command", "start": ["s"], "stop": ["s"], "status": ["s"]}
    st = stack_of(tmp_path, {"thehive": cmd, "elasticsearch": cmd, "cassandra": cmd})
    target = tmp_path / "data"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "f").write_text("keep me")
    host = LocalHost("n1")
    assert folders.folder_state(host, str(target)) == "non-empty"
    dest = folders.move_aside(st, "n1", str(target), "cold-x")
    assert dest == f"{target}.before-cold-x"
    assert Path(dest, "sub", "f").read_text() == "keep me"
    assert folders.folder_state(host, str(target)) == "missing"
    target.mkdir()
    assert folders.folder_state(host, str(target)) == "empty"
    (target / "g").write_text("new")
    with pytest.raises(ServiceError, match="already exists"):
        folders.move_aside(st, "n1", str(target), "cold-x")
    assert (target / "g").exists()


def test_extract_command_preserves_owner_and_mode():
    assert folders.extract_argv("/var/lib/x") == ["tar", "--same-owner", "-xpf", "-", "-C", "/var/lib/x"]


def test_copy_path_and_extract_path_round_trip_locally(tmp_path):
    """A folder through the repository and back on a local node: content, modes, inventory."""
    from tasks.repositories.local import LocalRepository

    cmd = {"kind": "command", "start": ["s"], "stop": ["s"], "status": ["s"]}
    st = stack_of(tmp_path, {"thehive": cmd, "elasticsearch": cmd, "cassandra": cmd})
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f.bin").write_bytes(os.urandom(200_000))
    (src / "g.txt").write_text("hello")
    (src / "g.txt").chmod(0o640)
    (src / "a").chmod(0o750)
    repo = LocalRepository(tmp_path / "repo")
    spec = cold_folders.PathSpec("cassandra", "n2", "data", str(src))
    entries, events = cold_folders.copy_path(st, repo, spec, "cold-20260101-000000-abcd", "zstd")
    archive, inventory = entries
    assert archive.key == "cold-20260101-000000-abcd/cold/n2/cassandra/data.tar.zst"
    assert (archive.files, archive.role, archive.component) == (2, "archive", "cassandra")
    listed = {e["path"]: e for e in __import__("json").loads(repo.get_bytes(inventory.key))["files"]}
    assert listed["g.txt"]["mode"] == 0o640 and listed["g.txt"]["size"] == 5
    assert listed["a"]["sha256"] is None and listed["a"]["mode"] == 0o750
    assert [e["event"] for e in events] == ["copy", "copied"]

    dst = tmp_path / "dst"
    events = folders.extract_path(st, repo, "n2", archive.key, str(dst), archive.files)
    assert [e["event"] for e in events] == ["extract", "extracted"]
    assert (dst / "a" / "b" / "f.bin").read_bytes() == (src / "a" / "b" / "f.bin").read_bytes()
    assert (dst / "g.txt").stat().st_mode & 0o777 == 0o640
    assert (dst / "a").stat().st_mode & 0o777 == 0o750
    with pytest.raises(ServiceError, match="extracted 2 files, the manifest lists 3"):
        folders.extract_path(st, repo, "n2", archive.key, str(tmp_path / "dst2"), 3)


def archived(tmp_path, st):
    """A folder copied into a local repository: (repository, archive entry, inventory entry)."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f.bin").write_bytes(os.urandom(50_000))
    (src / "weird\\name\nline").write_text("odd")
    (src / "g.txt").write_text("hello")
    repo = LocalRepository(tmp_path / "repo")
    spec = cold_folders.PathSpec("cassandra", "n2", "data", str(src))
    (archive, inventory), _ = cold_folders.copy_path(st, repo, spec, "cold-20260101-000000-abcd", "zstd")
    return repo, archive, inventory


def test_extraction_is_rehashed_on_the_node_against_the_inventory(tmp_path):
    st = local_stack(tmp_path)
    repo, archive, inventory = archived(tmp_path, st)
    dst = tmp_path / "dst"
    events = folders.extract_path(st, repo, "n2", archive.key, str(dst), archive.files, inventory.key)
    assert events[-1]["rehashed"] is True
    found = folders.rehash(LocalHost("n2"), str(dst))
    assert set(found) == {"a/f.bin", "weird\\name\nline", "g.txt"}

    # A file that differs from the inventory (here: the inventory is altered) fails the extraction.
    body = json.loads(repo.get_bytes(inventory.key))
    for e in body["files"]:
        if e["path"].endswith("g.txt"):
            e["sha256"] = "0" * 64
    repo.put(inventory.key, [json.dumps(body).encode()])
    with pytest.raises(ServiceError, match=r"g.txt: SHA-256 .* on disk, inventory 0000"):
        folders.extract_path(st, repo, "n2", archive.key, str(tmp_path / "dst2"), archive.files,
                             inventory.key)


def test_inventory_problems_missing_changed_and_unexpected():
    expected = {".": None, "a": None, "a/f": "1" * 64, "g": "2" * 64, "link": None}
    found = {"a/f": "1" * 64, "g": "3" * 64, "extra": "4" * 64, "link": "1" * 64}
    assert folders.inventory_problems(expected, found, "n:/d") == [
        "n:/d/g: SHA-256 3333333333333333… on disk, inventory 2222222222222222…",
        "n:/d/extra: on disk, not in the inventory"]
    assert folders.inventory_problems(expected, {"g": "2" * 64}, "n:/d") == ["n:/d/a/f: missing after extraction"]


def test_parse_sha256sum_unescapes_and_refuses_outside_root():
    lines = ["a" * 64 + "  /r/x/y", "\\" + "b" * 64 + "  /r/n\\nl\\\\b", ""]
    assert folders.parse_sha256sum(lines, "/r/") == {"x/y": "a" * 64, "n\nl\\b": "b" * 64}
    with pytest.raises(ServiceError, match="outside"):
        folders.parse_sha256sum(["c" * 64 + "  /other/z"], "/r")


@pytest.mark.parametrize("before", ["missing", "empty", "non-empty"])
@pytest.mark.parametrize("reached", ["planned", "moved", "extracted"])
def test_put_back_restores_the_folder_from_its_journal_whatever_phase(tmp_path, before, reached):
    st = local_stack(tmp_path)
    target = tmp_path / "data"
    if before != "missing":
        target.mkdir()
        target.chmod(0o711)
    if before == "non-empty":
        (target / "sub").mkdir()
        (target / "sub" / "f").write_text("original")
        (target / "g").write_text("original g")
    snapshot = tree(target) if target.exists() else None
    journal = folders.plan_folder(st, "n1", str(target), "cold-x", wipe=True)
    assert journal.before == before
    folders.write_journal(st, journal)
    assert folders.read_journal(st, "n1", str(target), "cold-x") == journal
    if reached != "planned" and journal.aside:
        folders.move_aside(st, "n1", str(target), "cold-x")
        journal = folders.advance(journal, "moved")
        folders.write_journal(st, journal)
    if reached == "extracted":  # a partial extraction
        target.mkdir(exist_ok=True)
        target.chmod(0o700)
        (target / "partial").write_text("half")
    done = folders.put_back(st, folders.read_journal(st, "n1", str(target), "cold-x"))
    assert done.startswith(f"n1:{target}: ")
    assert (tree(target) if target.exists() else None) == snapshot
    assert not Path(f"{target}.before-cold-x").exists()
    assert folders.read_journal(st, "n1", str(target), "cold-x") is None
    # Idempotent: a second put back (a re-run after a crash inside the first) changes nothing.
    folders.write_journal(st, journal)
    folders.put_back(st, journal)
    assert (tree(target) if target.exists() else None) == snapshot


def test_plan_folder_refusals(tmp_path):
    st = local_stack(tmp_path)
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in folders.plan_folder(st, "n1", str(tmp_path / "file"), "cold-x", True)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    assert "wipe=True moves it" in folders.plan_folder(st, "n1", str(tmp_path / "d"), "cold-x", False)
    (tmp_path / "d.before-cold-x").mkdir()
    assert "already exists" in folders.plan_folder(st, "n1", str(tmp_path / "d"), "cold-x", True)


def test_abort_hook_puts_an_interrupted_restore_back_from_its_journals(tmp_path, monkeypatch):
    """The cancellation/crash hook of the flow: a folder moved aside and half extracted comes
    back as it was, with nothing left beside it; the stack's start is attempted only then."""
    import uuid
    from types import SimpleNamespace

    import yaml

    from flows.cold_restore import _after_abort, cold_restore
    from tasks.manifest import Manifest, utcnow, write_manifest

    failing = {"kind": "command", "start": ["false"], "stop": ["true"], "status": ["false"]}
    st = stack_of(tmp_path, {"thehive": failing, "elasticsearch": failing, "cassandra": failing})
    stack_file = tmp_path / "stack.yaml"
    data = st.model_dump(mode="json", exclude_none=True)
    for svc in data["services"]:  # nothing here can start: give up at once
        svc["start_timeout"] = 1
    stack_file.write_text(yaml.safe_dump(data))
    src, live = tmp_path / "src", tmp_path / "live"
    for folder, text in ((src, "from the backup"), (live, "live data")):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "f").write_text(text)
    repo = LocalRepository(tmp_path / "repo")
    backup_id = "cold-20260101-000000-abcd"
    entries, _ = cold_folders.copy_path(st, repo, cold_folders.PathSpec("thehive", "n1", "stuff", str(src)),
                                        backup_id, "zstd")
    for e in entries:  # the archive goes back to ``live``
        e.path = str(live)
    write_manifest(repo, Manifest(backup_id=backup_id, kind="cold", stack="unit", started_at=utcnow(),
                                  finished_at=utcnow(), components=["files"], objects=entries))
    snapshot = tree(live)

    journal = folders.plan_folder(st, "n1", str(live), backup_id, wipe=True)
    folders.write_journal(st, journal)
    folders.move_aside(st, "n1", str(live), backup_id)
    folders.write_journal(st, folders.advance(journal, "moved"))
    live.mkdir()
    (live / "sub").mkdir()
    (live / "sub" / "f").write_text("from the bac")  # killed mid-extraction

    monkeypatch.setenv("PREFECT_LOGGING_TO_API_ENABLED", "false")  # no server in unit tests
    run = SimpleNamespace(id=uuid.uuid4(), name="aborted", flow_id=uuid.uuid4(), deployment_id=None,
                          parent_task_run_id=None,
                          parameters={"stack": str(stack_file), "backup_id": backup_id})
    _after_abort(cold_restore, run, None)
    assert tree(live) == snapshot
    assert not Path(folders.aside_path(str(live), backup_id)).exists()
    assert folders.read_journal(st, "n1", str(live), backup_id) is None
