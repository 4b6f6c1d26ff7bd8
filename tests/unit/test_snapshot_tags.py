"""Snapshot tags read from the data folders (one ``find``), as preflight and the crash hook use them."""
from __future__ import annotations

import pytest

from config.model import CassandraNodeSettings
from tasks.cassandra import snapshot_tags_on_disk
from tasks.hosts import CommandFailed, LocalHost


def test_tags_of_every_keyspace_and_data_folder(tmp_path):
    first, second = tmp_path / "d1", tmp_path / "d2"
    (first / "thehive" / "edgestore-1a" / "snapshots" / "hot-1-abc").mkdir(parents=True)
    (first / "thehive" / "edgestore-1a" / "snapshots" / "rb-42").mkdir(parents=True)
    (first / "system" / "local-7f" / "snapshots" / "dropped-99-local").mkdir(parents=True)
    (second / "thehive" / "graphindex-2b" / "snapshots" / "hot-1-abc" / "nested").mkdir(parents=True)
    (second / "thehive" / "graphindex-2b" / "backups").mkdir(parents=True)  # incremental_backups: not a tag
    (second / "thehive" / "snapshots-3c" / "nb-1-big-Data.db").parent.mkdir(parents=True)  # a table named so
    (second / "thehive" / "snapshots-3c" / "nb-1-big-Data.db").write_bytes(b"x")
    settings = CassandraNodeSettings(data_dirs=[str(first), str(second)])
    assert snapshot_tags_on_disk(LocalHost("n1"), settings) == {"hot-1-abc", "rb-42", "dropped-99-local"}


def test_no_snapshot_is_an_empty_set_and_a_wrong_data_folder_fails(tmp_path):
    (tmp_path / "d1" / "thehive" / "edgestore-1a").mkdir(parents=True)
    assert snapshot_tags_on_disk(LocalHost("n1"), CassandraNodeSettings(data_dirs=[str(tmp_path / "d1")])) == set()
    with pytest.raises(CommandFailed, match="missing"):
        snapshot_tags_on_disk(LocalHost("n1"), CassandraNodeSettings(data_dirs=[str(tmp_path / "missing")]))
