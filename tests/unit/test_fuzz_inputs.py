"""Hostile archives and manifests, generated: clean refusals, never a traceback or a member that
would land outside the target folder."""
from __future__ import annotations

import json
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.archive import UnsafeArchive, check_member
from tasks.manifest import ManifestError, parse_manifest

SEGMENTS = st.sampled_from(["a", "b", "..", ".", "", "x.db", "..a", "a..", "~", " "])
PATHS = st.builds(lambda lead, parts: lead + "/".join(parts),
                  st.sampled_from(["", "", "/", "./", "//"]), st.lists(SEGMENTS, min_size=1, max_size=6))
KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                         tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
ESCAPES = (tarfile.AbsolutePathError, tarfile.OutsideDestinationError, tarfile.AbsoluteLinkError,
           tarfile.LinkOutsideDestinationError, tarfile.SpecialFileError)


@settings(max_examples=2000, deadline=None)
@given(name=PATHS, kind=KINDS, link=PATHS)
def test_an_accepted_member_stays_inside_by_pythons_own_data_filter(name, kind, link):
    """Python's ``data`` extraction filter is the oracle: whatever we accept, it must not find
    outside the destination (an absolute name, a '..' escape, a link out, a device)."""
    member = tarfile.TarInfo(name)
    member.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        member.linkname = link
    try:
        check_member(member)
    except UnsafeArchive:
        return
    dest = "/srv/target"
    try:
        tarfile.data_filter(member, dest)
    except ESCAPES as exc:
        pytest.fail(f"accepted {name!r} ({kind!r} -> {link!r}) but the data filter says {exc!r}")
    except tarfile.FilterError:
        pass  # e.g. a hard link to a member the filter cannot see: not an escape


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200))
def test_any_bytes_are_a_manifest_or_a_clean_error(data):
    try:
        parse_manifest(data, "b1/manifest.json")
    except ManifestError as exc:
        assert str(exc).startswith("b1/manifest.json: ")


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                              st.text(max_size=20)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.text(max_size=15), inner, max_size=5)),
                    max_leaves=20)


@settings(max_examples=500, deadline=None)
@given(body=st.dictionaries(st.sampled_from(["backup_id", "kind", "started", "finished", "objects",
                                             "cassandra", "elasticsearch", "files", "cold", "status",
                                             "components", "label", "tool"]), JSON, max_size=8))
def test_a_manifest_of_the_right_version_with_any_fields_is_a_manifest_or_a_clean_error(body):
    body["format_version"] = 1
    try:
        parse_manifest(json.dumps(body).encode(), "b1/manifest.json")
    except ManifestError as exc:
        assert str(exc).startswith("b1/manifest.json: ")
