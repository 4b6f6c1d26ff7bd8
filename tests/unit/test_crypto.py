"""The encrypted object format (docs/FORMAT.md, "Encryption") and EncryptingRepository over a local
folder: round trips, tampering, truncation, reordering, wrong keys, rotation, key references."""
from __future__ import annotations

import base64
import os
import tracemalloc

import pytest

from config.model import Encryption
from tasks.repositories.base import ObjectInfo
from tasks.repositories.crypto import (
    CHUNK,
    HEADER_SIZE,
    SEALED,
    EncryptionError,
    IntegrityError,
    Keyring,
    KeyUnavailable,
    MasterKey,
    NotEncrypted,
    Sealer,
    decrypt_bytes,
    encrypt_bytes,
    parse_key,
    plaintext_size,
    stored_size,
)
from tasks.repositories.encrypting import EncryptingRepository, keyring_from
from tasks.repositories.local import LocalRepository

KEY_A, KEY_B = MasterKey.from_bytes(b"a" * 32, "key"), MasterKey.from_bytes(b"b" * 32, "key")
OBJ = "hot-20261127-072100-3fa2/cassandra/n1/thehive/edgestore-0a1b.tar.zst"
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_and_sizes(size):
    data = os.urandom(size)
    sealed = encrypt_bytes(KEY_A, OBJ, data)
    assert len(sealed) == stored_size(size) and plaintext_size(len(sealed)) == size
    assert decrypt_bytes(Keyring(KEY_A), OBJ, sealed) == data


def test_streaming_with_odd_pieces_matches_and_hides_the_plaintext():
    data = b"ransomware beacon " * 20000
    pieces = [data[i:i + 7777] for i in range(0, len(data), 7777)]
    sealer = Sealer(KEY_A, OBJ)
    sealed = b"".join(sealer.seal(iter(pieces)))
    assert sealer.plain == len(data) and len(sealed) == stored_size(len(data))
    assert b"ransomware" not in sealed and decrypt_bytes(Keyring(KEY_A), OBJ, sealed) == data
    again = encrypt_bytes(KEY_A, OBJ, data)
    assert again[HEADER_SIZE:HEADER_SIZE + 64] != sealed[HEADER_SIZE:HEADER_SIZE + 64]  # random salt


def _chunks(sealed: bytes) -> tuple[bytes, list[bytes]]:
    body = sealed[HEADER_SIZE:]
    return sealed[:HEADER_SIZE], [body[i:i + SEALED] for i in range(0, len(body), SEALED)]


@pytest.mark.parametrize("damage", ["flip-body", "flip-tag", "flip-header-salt", "flip-key-id",
                                    "swap-chunks", "drop-middle", "drop-last", "cut-mid-chunk",
                                    "duplicate-chunk", "append", "other-object-key"])
def test_tampering_truncation_and_reordering_are_detected(damage):
    data = os.urandom(3 * CHUNK + 100)
    sealed = encrypt_bytes(KEY_A, OBJ, data)
    header, chunks = _chunks(sealed)
    key = OBJ
    expected: type[Exception] = IntegrityError
    if damage == "flip-body":
        b = bytearray(sealed)
        b[HEADER_SIZE + CHUNK // 2] ^= 1
        bad = bytes(b)
    elif damage == "flip-tag":
        bad = sealed[:-1] + bytes([sealed[-1] ^ 0x80])
    elif damage == "flip-header-salt":
        b = bytearray(sealed)
        b[20] ^= 1
        bad = bytes(b)
    elif damage == "flip-key-id":
        b = bytearray(sealed)
        b[9] ^= 1
        bad, expected = bytes(b), KeyUnavailable
    elif damage == "swap-chunks":
        bad = header + chunks[1] + chunks[0] + b"".join(chunks[2:])
    elif damage == "drop-middle":
        bad = header + chunks[0] + b"".join(chunks[2:])
    elif damage == "drop-last":
        bad = header + b"".join(chunks[:-1])
    elif damage == "cut-mid-chunk":
        bad = sealed[:HEADER_SIZE + SEALED + 1000]
    elif damage == "duplicate-chunk":
        bad = header + chunks[0] + chunks[0] + b"".join(chunks[1:])
    elif damage == "append":
        bad = sealed + chunks[0]
    else:
        bad, key = sealed, OBJ.replace("n1", "n2")
    with pytest.raises(expected):
        decrypt_bytes(Keyring(KEY_A), key, bad)


def test_header_cut_and_empty_object_are_not_ours():
    sealed = encrypt_bytes(KEY_A, OBJ, b"x")
    for bad in (b"", sealed[:HEADER_SIZE - 1], b'{"format_version": 1}'):
        with pytest.raises(NotEncrypted, match="not encrypted"):
            decrypt_bytes(Keyring(KEY_A), OBJ, bad)
    with pytest.raises(IntegrityError, match="cut short"):
        decrypt_bytes(Keyring(KEY_A), OBJ, sealed[:HEADER_SIZE + 5])


def test_wrong_key_names_the_key_id_expected_and_available():
    sealed = encrypt_bytes(KEY_A, OBJ, b"case notes")
    ring = Keyring(KEY_B, (), ("old_keys[0] (environment variable OLD is not set)",))
    with pytest.raises(KeyUnavailable) as err:
        decrypt_bytes(ring, OBJ, sealed, "repo/x")
    assert err.value.expected == KEY_A.key_id and err.value.available == [KEY_B.key_id]
    message = str(err.value)
    assert KEY_A.key_id in message and f"{KEY_B.key_id} (key)" in message and "OLD is not set" in message


def test_rotation_old_key_still_reads():
    old = encrypt_bytes(KEY_A, OBJ, b"under A")
    rotated = Keyring(KEY_B, (MasterKey.from_bytes(b"a" * 32, "old_keys[0]"),))
    new = encrypt_bytes(rotated.current, OBJ, b"under B")
    assert decrypt_bytes(rotated, OBJ, old) == b"under A" and decrypt_bytes(rotated, OBJ, new) == b"under B"
    with pytest.raises(KeyUnavailable):
        decrypt_bytes(Keyring(KEY_A), OBJ, new)


def test_key_ids_and_content_names_are_keyed():
    assert len(KEY_A.key_id) == 16 and KEY_A.key_id != KEY_B.key_id
    assert KEY_A.content_name(b"same") != KEY_B.content_name(b"same")
    assert KEY_A.content_name(b"same") == MasterKey.from_bytes(b"a" * 32, "x").content_name(b"same")
    assert "data_key" not in repr(KEY_A) and repr(b"a" * 32)[2:10] not in repr(KEY_A)


@pytest.mark.parametrize("text", ["", "short", "zz" * 32, base64.b64encode(b"x" * 31).decode(), "a" * 63])
def test_malformed_keys_are_refused_without_showing_them(text):
    with pytest.raises(EncryptionError) as err:
        parse_key(text, "repository.encryption.key (env:K)")
    assert "env:K" in str(err.value) and (not text or text not in str(err.value))


def test_keys_in_hex_and_base64_are_the_same_key():
    raw = os.urandom(32)
    assert parse_key(raw.hex(), "k") == parse_key(base64.b64encode(raw).decode(), "k") \
        == parse_key(base64.urlsafe_b64encode(raw).decode() + "\n", "k") == raw


def test_memory_stays_bounded_while_streaming():
    piece = os.urandom(1 << 20)
    tracemalloc.start()
    try:
        total = 0
        sealer = Sealer(KEY_A, OBJ)
        for out in sealer.seal(piece for _ in range(64)):  # 64 MiB through
            total += len(out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == stored_size(64 << 20) and peak < 8 << 20


# -- the wrapper over a real local repository ---------------------------------------------------

def _env_keys(monkeypatch, **values):
    for name, raw in values.items():
        monkeypatch.setenv(name, base64.b64encode(raw).decode())


def test_wrapper_round_trip_sizes_and_plaintext_lock(tmp_path, monkeypatch):
    _env_keys(monkeypatch, THB_K=b"k" * 32)
    ring = keyring_from(Encryption.model_validate({"key": {"env": "THB_K"}}))
    plain = LocalRepository(str(tmp_path))
    repo = EncryptingRepository(plain, ring)
    data = os.urandom(2 * CHUNK + 5)
    assert repo.put(OBJ, iter([data[:100], data[100:]])) == len(data)
    assert repo.put_bytes("b1/manifest.json", b'{"secret": "case"}') == 18
    assert repo.put_if_absent("locks/lock.json", b'{"host": "h"}')
    assert repo.put_if_absent("probe-0123456789abcdef0123456789abcdef", b"probe")
    assert repo.get_bytes(OBJ) == data and repo.get_bytes("b1/manifest.json") == b'{"secret": "case"}'
    assert repo.stat(OBJ) == ObjectInfo(OBJ, len(data)) and plain.stat(OBJ).size == stored_size(len(data))
    assert {o.key: o.size for o in repo.list("b1/")} == {"b1/manifest.json": 18}
    assert plain.get_bytes("locks/lock.json") == b'{"host": "h"}'  # the lock stays readable
    assert b"case" not in plain.get_bytes("b1/manifest.json")
    assert repo.key_id_of(OBJ) == ring.current.key_id


def test_wrapper_refuses_plaintext_objects_and_foreign_keys_at_get(tmp_path, monkeypatch):
    _env_keys(monkeypatch, THB_K=b"k" * 32, THB_J=b"j" * 32)
    plain = LocalRepository(str(tmp_path))
    plain.put_bytes("b1/manifest.json", b"{}")
    repo = EncryptingRepository(plain, keyring_from(Encryption.model_validate({"key": {"env": "THB_K"}})))
    with pytest.raises(NotEncrypted):
        repo.get_bytes("b1/manifest.json")
    other = EncryptingRepository(plain, keyring_from(Encryption.model_validate({"key": {"env": "THB_J"}})))
    other.put_bytes("b2/manifest.json", b"{}")
    with pytest.raises(KeyUnavailable), repo.get("b2/manifest.json"):
        pass  # refused when opened, before anything is read


def test_missing_current_key_fails_and_missing_old_key_is_named_later(monkeypatch):
    monkeypatch.delenv("THB_NOPE", raising=False)
    with pytest.raises(EncryptionError, match="repository.encryption.key: environment variable THB_NOPE"):
        keyring_from(Encryption.model_validate({"key": {"env": "THB_NOPE"}}))
    _env_keys(monkeypatch, THB_K=b"k" * 32)
    ring = keyring_from(Encryption.model_validate({"key": {"env": "THB_K"}, "old_keys": [{"env": "THB_NOPE"}]}))
    assert ring.old == () and "THB_NOPE" in ring.describe()
    monkeypatch.setenv("THB_BAD", "not a key")
    with pytest.raises(EncryptionError, match=r"old_keys\[0\] \(env:THB_BAD\): not a key"):
        keyring_from(Encryption.model_validate({"key": {"env": "THB_K"}, "old_keys": [{"env": "THB_BAD"}]}))
