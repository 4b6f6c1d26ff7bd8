"""Manifest format: version checked first, ids valid everywhere they are used."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest

from tasks.layout import new_backup_id
from tasks.manifest import Manifest, ManifestError, ObjectEntry, parse_manifest


def test_backup_id_is_a_valid_snapshot_tag_es_name_and_key():
    bid = new_backup_id("hot", datetime(2026, 11, 27, 7, 21, tzinfo=timezone.utc))
    assert re.fullmatch(r"hot-20261127-072100-[0-9a-f]{4}", bid)
    assert bid == bid.lower()


def test_round_trip_keeps_extra_fields():
    m = Manifest(backup_id="hot-1", kind="hot", stack="s", started_at="a", finished_at="b",
                 components=["cassandra"],
                 objects=[ObjectEntry(key="k", size=1, sha256="0" * 64, component="cassandra", seconds=1.5)])
    back = parse_manifest(m.model_dump_json().encode(), "m")
    assert back.objects[0].seconds == 1.5 and back.size == 1


@pytest.mark.parametrize("body,msg", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"format_version": 2}).encode(), "format_version 2 is not supported"),
    (json.dumps({"backup_id": "x"}).encode(), "format_version None"),
    (json.dumps({"format_version": 1, "kind": "hot"}).encode(), "backup_id"),
])
def test_unreadable_manifests_are_refused(body, msg):
    with pytest.raises(ManifestError, match=msg):
        parse_manifest(body, "repo/x/manifest.json")
