"""Listing a snapshot folder component by component (incremental mode), on a local folder."""
from __future__ import annotations

import hashlib

import pytest

from tasks.hosts import LocalHost
from tasks.table_parts import SnapshotListingError, list_components


class ChangingHost(LocalHost):
    """A folder that gains a file between the two walks, ``changes`` times."""

    def __init__(self, folder, changes: int):
        super().__init__("n1")
        self.folder, self.changes = folder, changes

    def run(self, argv, **kwargs):
        if "sha256sum" in argv and self.changes:
            self.changes -= 1
            (self.folder / f"late-{self.changes}").write_bytes(b"late")
        return super().run(argv, **kwargs)


def snapshot(tmp_path):
    folder = tmp_path / "snapshots" / "thb-x"
    (folder / ".idx").mkdir(parents=True)
    (folder / "nb-1-big-Data.db").write_bytes(b"data" * 100)
    (folder / ".idx" / "nb-1-big-Index.db").write_bytes(b"index")
    return folder


def test_every_file_with_its_size_and_sha256(tmp_path):
    folder = snapshot(tmp_path)
    listed = list_components(LocalHost("n1"), str(folder))
    assert listed == {".idx/nb-1-big-Index.db": (5, hashlib.sha256(b"index").hexdigest()),
                      "nb-1-big-Data.db": (400, hashlib.sha256(b"data" * 100).hexdigest())}


def test_a_folder_that_changed_between_the_walks_is_listed_again(tmp_path):
    folder = snapshot(tmp_path)
    listed = list_components(ChangingHost(folder, changes=1), str(folder))
    assert set(listed) == {".idx/nb-1-big-Index.db", "nb-1-big-Data.db", "late-0"}


def test_a_folder_that_keeps_changing_fails_naming_the_files(tmp_path):
    folder = snapshot(tmp_path)
    with pytest.raises(SnapshotListingError, match="changed while listed, 3 times: late-"):
        list_components(ChangingHost(folder, changes=5), str(folder))
