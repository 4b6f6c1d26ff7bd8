"""The repository layout: every example docs/FORMAT.md gives is parsed and built back by
tasks/layout.py, so the spec and the code cannot drift apart; the backup-id grammar."""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tasks import layout
from tasks.archive import EXTENSIONS, compression_of

FORMAT = Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md"


def format_examples() -> list[tuple[str, str, dict[str, str]]]:
    """(example, what, {part: value}) for each line of FORMAT.md's ``layout-examples`` block."""
    block = re.search(r"```layout-examples\n(.*?)```", FORMAT.read_text(), re.DOTALL)
    assert block, "docs/FORMAT.md has no layout-examples block"
    rows = []
    for line in block.group(1).splitlines():
        if line.strip():
            text, what, *parts = line.split()
            rows.append((text, what, dict(p.split("=", 1) for p in parts)))
    return rows


EXAMPLES = format_examples()
KEY_KINDS = {"manifest", "started", "table", "schema", "attachments", "attachments-inventory",
             "bucket-object", "cold-archive", "cold-inventory", "lock", "legacy-lock", "break-marker",
             "probe", "es-blob", "es-metadata", "table-parts", "sstable"}


def build(what: str, p: dict[str, str]) -> str | None:
    """The key the builder of ``what`` makes from the parts (None: no builder, a fixed or random name)."""
    bid = p.get("backup_id", "")
    return {
        "manifest": lambda: layout.manifest_key(bid),
        "started": lambda: layout.started_key(bid),
        "table": lambda: layout.table_key(bid, p["node"], p["keyspace"], p["table_dir"], p["compression"]),
        "schema": lambda: layout.schema_key(bid, p["keyspace"]),
        "attachments": lambda: layout.attachments_key(bid, p["compression"]),
        "attachments-inventory": lambda: layout.attachments_inventory_key(bid),
        "bucket-object": lambda: layout.bucket_object_key(bid, p["bucket_key"]),
        "cold-archive": lambda: layout.cold_archive_key(bid, p["node"], p["service"], p["name"],
                                                        p["compression"]),
        "cold-inventory": lambda: layout.cold_inventory_key(bid, p["node"], p["service"], p["name"]),
        "es-blob": lambda: layout.es_blob_key(p["es_repository"], p["path"]),
        "es-metadata": lambda: layout.es_metadata_key(bid, p["name"]),
        "table-parts": lambda: layout.table_parts_key(bid, p["node"], p["keyspace"], p["table_dir"]),
        "sstable": lambda: layout.sstable_key(p["name"], p["compression"]),
        "lock": lambda: layout.LOCK_KEY,
        "break-marker": lambda: layout.break_marker_key(p["nonce"]),
    }.get(what, lambda: None)()


def test_the_spec_gives_examples_of_every_kind_of_key_and_every_compression():
    whats = {what for _, what, _ in EXAMPLES}
    assert KEY_KINDS | {"backup-id", "foreign-id", "snapshot-tag"} <= whats
    written = {p["compression"] for _, what, p in EXAMPLES if what == "table"}
    assert written == set(EXTENSIONS)


@pytest.mark.parametrize("text,what,parts", [e for e in EXAMPLES if e[1] in KEY_KINDS],
                         ids=[e[0] for e in EXAMPLES if e[1] in KEY_KINDS])
def test_key_examples_parse_and_build_back(text, what, parts):
    key = layout.parse_key(text)
    assert key.kind == what
    found = {f: getattr(key, f) for f in ("backup_id", "node", "keyspace", "table_dir", "compression",
                                          "service", "name", "bucket_key", "nonce", "es_repository", "path")
             if getattr(key, f)}
    assert found == parts
    assert layout.backup_id_of(text) == parts.get("backup_id")
    assert layout.is_manifest_key(text) == (what == "manifest")
    assert layout.is_lock_key(text) == (what in ("lock", "legacy-lock"))
    assert layout.is_break_marker(text) == (what == "break-marker")
    assert layout.is_attachments_archive(text) == (what == "attachments")
    archive = what in ("table", "attachments", "cold-archive")
    assert layout.is_archive_key(text) == archive
    if archive:
        assert compression_of(text) == parts["compression"]
    assert layout.cold_service_of(text) == (parts["service"] if what.startswith("cold-") else None)
    if (built := build(what, parts)) is not None:
        assert built == text
    if "backup_id" in parts:
        assert text.startswith(layout.backup_prefix(parts["backup_id"]))


@pytest.mark.parametrize("text,what,parts", [e for e in EXAMPLES if e[1].endswith("-id")],
                         ids=[e[0] for e in EXAMPLES if e[1].endswith("-id")])
def test_id_examples(text, what, parts):
    parsed = layout.parse_backup_id(text)
    if what == "foreign-id":
        assert parsed is None and not layout.is_backup_id(text) and layout.backup_time(text) is None
        return
    assert parsed is not None and layout.is_backup_id(text)
    when = datetime.fromisoformat(parts["time"]).replace(tzinfo=UTC)
    assert (parsed.kind, parsed.time) == (parts["kind"], when)
    assert layout.backup_kind(text) == parts["kind"] and layout.backup_time(text) == when
    made = layout.new_backup_id(parts["kind"], when)
    assert made[:-4] == text[:-4] and layout.is_backup_id(made)


@pytest.mark.parametrize("text,parts", [(t, p) for t, w, p in EXAMPLES if w == "snapshot-tag"])
def test_tag_examples(text, parts):
    assert layout.snapshot_tag(parts["backup_id"], parts["repo"]) == text
    assert layout.is_our_tag(text, parts["repo"]) and not layout.is_our_tag(text, "00000000")
    assert not layout.is_unattributed_tag(text) and layout.is_unattributed_tag(parts["backup_id"])


def test_every_id_and_tag_quoted_in_the_spec_is_well_formed():
    quoted = re.findall(r"`((?:hot|cold)-\d[^`/ ]*)`", FORMAT.read_text())
    assert quoted
    for text in quoted:
        bid = text[: len("hot-20261127-072100-3fa2") + (text.startswith("cold-"))]
        assert layout.is_backup_id(bid), text
        assert text == bid or layout.SNAPSHOT_TAG.match(text), text


def test_the_extensions_the_spec_names_are_the_ones_written():
    text = " ".join(FORMAT.read_text().split())
    for compression, ext in EXTENSIONS.items():
        assert f"`{ext}` ({compression}" in text


# -- the backup-id grammar -------------------------------------------------------------------------

def test_new_ids_are_utc_lower_case_and_valid_everywhere_they_are_used():
    local = datetime(2026, 11, 27, 9, 21, tzinfo=timezone(timedelta(hours=2)))
    bid = layout.new_backup_id("cold", local)
    assert re.fullmatch(r"cold-20261127-072100-[0-9a-f]{4}", bid)
    assert re.fullmatch(r"[a-z0-9-]+", bid)  # Cassandra tag, ES snapshot name, object key
    assert layout.parse_backup_id(bid).time == datetime(2026, 11, 27, 7, 21, tzinfo=UTC)
    assert layout.is_our_tag(layout.snapshot_tag(bid, layout.repository_id("file:///b")),
                             layout.repository_id("file:///b"))


def test_two_ids_of_the_same_second_differ_and_sort_by_time_across_kinds():
    now = datetime(2026, 11, 27, 7, 21, tzinfo=UTC)
    assert len({layout.new_backup_id("hot", now) for _ in range(50)}) > 1
    ids = ["hot-20261127-020000-aaaa", "cold-20261127-030000-bbbb", "hot-20261126-230000-cccc"]
    assert sorted(ids, key=layout.backup_sort_key) == [ids[2], ids[0], ids[1]]


@pytest.mark.parametrize("text", [
    "hot-20261327-020000-aaaa", "hot-20261127-250000-aaaa", "warm-20261127-020000-aaaa",
    "hot-20261127-020000-aaa", "hot-20261127-020000-aaaa/", "hot-20261127-020000", "rb-0123456789", ""])
def test_malformed_ids_are_not_ours(text):
    assert layout.parse_backup_id(text) is None and not layout.is_backup_id(text)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError):
        layout.new_backup_id("warm")


def test_foreign_names_keep_their_catalog_kind_and_are_not_backups_of_locks():
    assert layout.backup_kind("reference-2024-09-23") == "reference"
    assert layout.backup_id_of("locks/lock.json") is None
    assert layout.backup_id_of("probe-abc") is None
    assert layout.backup_id_of("archive_backup/h1/2024-09-23/ks/t.tbz") == "archive_backup"
    assert layout.parse_key("hot-20261127-072100-3fa2/cassandra/n1/ks/t-1.zip").kind == "other"


def test_rollback_tags_are_never_ours():
    assert not layout.is_our_tag("rb-0123456789", "01234567")
    with pytest.raises(ValueError):
        layout.snapshot_tag("rb-0123456789", "01234567")
