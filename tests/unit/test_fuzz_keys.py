"""Hostile names and bytes, generated: the key and id parsers and the encrypted-object reader
give an answer or a clean error, never a traceback, and never accept a tampered object."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import layout
from tasks.repositories.crypto import EncryptionError, Keyring, MasterKey, decrypt_bytes, encrypt_bytes

KEY = MasterKey.from_bytes(bytes(range(32)), "key")
KEYRING = Keyring(KEY)

# Real shapes cut and spliced with hostile pieces, plus arbitrary text.
PIECES = st.sampled_from([
    "hot-20261128-094026-b006", "cold-20260101-000000-0000", "manifest.json", "started.json",
    "cassandra", "schema", "thehive.cql", "n1", "thehive", "edgestore-1a2b.tar.zst", "files",
    "inventory.json", "objects", "attachments.tar.gz", "elasticsearch", "index-7", "index.latest",
    "cold", "data.tar.zst", "data.inventory.json", "es-blobs", "__abc", "%2Fetc", "locks",
    "lock.json", "..", ".", "", " ", "\x00", "é", "a/b", "-rf",
])
KEYS = st.one_of(st.text(max_size=120),
                 st.lists(PIECES, min_size=1, max_size=6).map("/".join))


@settings(max_examples=3000, deadline=None)
@given(key=KEYS)
def test_any_key_is_named_or_other_and_a_named_key_rebuilds(key):
    parsed = layout.parse_key(key)  # never raises: a stranger is "other"
    assert parsed.kind in {
        "break-marker", "lock", "legacy-lock", "probe", "es-blob", "manifest", "started", "schema",
        "table", "attachments-inventory", "attachments", "bucket-object", "es-metadata",
        "cold-inventory", "cold-archive", "other"}
    if parsed.kind == "manifest":
        assert key == layout.manifest_key(parsed.backup_id)
    if parsed.kind == "table":
        assert key == layout.table_key(parsed.backup_id, parsed.node, parsed.keyspace,
                                       parsed.table_dir, parsed.compression)
    folder = layout.backup_id_of(key)  # the first folder, ours or a stranger's, never locks/
    if folder is not None:
        assert key.startswith(folder + "/") and folder not in ("locks", "es-blobs")
    if parsed.kind not in ("other", "lock", "legacy-lock", "probe", "break-marker", "es-blob"):
        assert parsed.backup_id == folder  # a stranger's folder too: the catalog reports it


@settings(max_examples=3000, deadline=None)
@given(text=st.one_of(st.text(max_size=40),
                      st.from_regex(r"(hot|cold)-\d{8}-\d{6}-[0-9a-f]{4}", fullmatch=True)))
def test_any_text_is_a_backup_id_with_a_real_time_or_none(text):
    parsed = layout.parse_backup_id(text)
    if parsed is not None:  # 20261399-256100 matches the shape and is refused, not a ValueError
        assert layout.new_backup_id(parsed.kind, parsed.time).split("-")[:3] == text.split("-")[:3]
        assert layout.backup_time(text) == parsed.time


@settings(max_examples=400, deadline=None)
@given(plain=st.binary(max_size=3000), where=st.integers(min_value=0), flip=st.integers(1, 255),
       cut=st.integers(min_value=0))
def test_a_tampered_or_cut_encrypted_object_is_refused_cleanly(plain, where, flip, cut):
    sealed = encrypt_bytes(KEY, "hot-20261128-094026-b006/manifest.json", plain)
    assert decrypt_bytes(KEYRING, "hot-20261128-094026-b006/manifest.json", sealed) == plain
    tampered = bytearray(sealed)
    tampered[where % len(tampered)] ^= flip
    for bad in (bytes(tampered), sealed[: cut % len(sealed)]):
        try:
            decrypt_bytes(KEYRING, "hot-20261128-094026-b006/manifest.json", bad)
        except EncryptionError:
            continue
        raise AssertionError("a tampered or truncated object was accepted")
    try:  # the same bytes moved to another key: refused too (the key is authenticated)
        decrypt_bytes(KEYRING, "hot-20261128-094026-b006/started.json", sealed)
    except EncryptionError:
        pass
    else:
        raise AssertionError("an object moved to another key was accepted")


@settings(max_examples=500, deadline=None)
@given(data=st.one_of(st.binary(max_size=200), st.binary(max_size=200).map(lambda b: b"THBENC" + b)))
def test_any_bytes_are_refused_cleanly_as_an_encrypted_object(data):
    try:
        decrypt_bytes(KEYRING, "k", data)
    except EncryptionError:
        return
    raise AssertionError("random bytes decrypted")
