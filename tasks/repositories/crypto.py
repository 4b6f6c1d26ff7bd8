"""The encrypted object format of docs/FORMAT.md ("Encryption"): keys, header, chunk framing.

Plain functions over byte streams, no repository in sight, so that the format is tested on its own
(``tests/unit/test_crypto.py``). AES-256-GCM comes from ``cryptography``; the only construction of
ours is the STREAM chunk framing (nonce = random prefix | chunk number | last-chunk flag), which
``cryptography`` does not offer. Memory stays bounded by a couple of chunks whatever the object size.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tasks.repositories.base import RepositoryError

MAGIC = b"THBENC"
VERSION = 1
AES_256_GCM = 1
HEADER = struct.Struct(">6sBB8s16s7s")  # magic, version, algorithm, key id, salt, nonce prefix
HEADER_SIZE = HEADER.size  # 39
CHUNK = 1 << 16  # plaintext bytes per chunk (all but the last)
TAG = 16
SEALED = CHUNK + TAG
MAX_CHUNKS = 1 << 32


class EncryptionError(RepositoryError):
    """An object cannot be decrypted, or a key cannot be used: definite, never retried."""


class KeyUnavailable(EncryptionError):
    """The object is under a key id that none of the configured keys has."""

    def __init__(self, message: str, expected: str, available: list[str]):
        super().__init__(message)
        self.expected, self.available = expected, available


class NotEncrypted(EncryptionError):
    """The object has no header of ours (plaintext, or a stranger's file)."""


class IntegrityError(EncryptionError):
    """A chunk failed its tag, or the object ends without its last chunk."""


def parse_key(text: str, source: str) -> bytes:
    """32 bytes from 64 hex digits or base64 (standard or URL-safe); ``source`` names the reference
    in the error, the value never appears in it."""
    value = text.strip()
    raw: bytes | None = None
    if len(value) == 64:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise EncryptionError(f"{source}: not a key: write 32 random bytes as 64 hex digits or in "
                              "base64 (e.g. `openssl rand -base64 32`)")
    return raw


def _hkdf(key: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


@dataclass(frozen=True)
class MasterKey:
    """One configured key, as its derived keys; ``repr`` shows the id and where it came from only."""

    key_id: str  # 16 hex digits
    source: str  # "key", "old_keys[0]": for messages
    data_key: bytes = field(repr=False)
    content_key: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, raw: bytes, source: str) -> MasterKey:
        key_id = hmac.new(raw, b"thehive-backup key id", hashlib.sha256).digest()[:8].hex()
        return cls(key_id, source, _hkdf(raw, b"thehive-backup v1 data"),
                   _hkdf(raw, b"thehive-backup v1 content address"))

    def content_name(self, data: bytes) -> str:
        """The name of a content-addressed object (incremental mode): a keyed hash, so that the
        repository cannot test guesses of plaintext."""
        return hmac.new(self.content_key, data, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Keyring:
    """The key to write with, earlier keys to read with, and the old references that could not
    be resolved (an error only when an object under them is read)."""

    current: MasterKey
    old: tuple[MasterKey, ...] = ()
    unresolved: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"{k.key_id} ({k.source})" for k in (self.current, *self.old)]
        return ", ".join(parts + [f"none from {u}" for u in self.unresolved])

    def for_id(self, key_id: str, what: str) -> MasterKey:
        for k in (self.current, *self.old):
            if k.key_id == key_id:
                return k
        raise KeyUnavailable(
            f"{what} is encrypted with key id {key_id}; this stack file gives {self.describe()}: "
            f"add the key with id {key_id} to repository.encryption.old_keys",
            key_id, [k.key_id for k in (self.current, *self.old)])


def plaintext_size(stored: int) -> int:
    """The plaintext size of an object of ``stored`` bytes (docs/FORMAT.md); -1 if none fits."""
    body = stored - HEADER_SIZE
    if body < TAG:
        return -1
    chunks = -(-body // SEALED)
    return body - TAG * chunks


def stored_size(plain: int) -> int:
    return HEADER_SIZE + plain + TAG * max(1, -(-plain // CHUNK))


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= MAX_CHUNKS:
        raise EncryptionError("object too large for one encrypted stream (2^32 chunks)")
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def _object_cipher(data_key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(_hkdf(data_key, b"thehive-backup v1 object", salt))


def _aad(header: bytes, object_key: str) -> bytes:
    return header + object_key.encode()


class Sealer:
    """Encrypts one object's stream; ``plain`` counts the plaintext bytes that went through."""

    def __init__(self, key: MasterKey, object_key: str):
        salt, self._prefix = os.urandom(16), os.urandom(7)
        self.header = HEADER.pack(MAGIC, VERSION, AES_256_GCM, bytes.fromhex(key.key_id), salt, self._prefix)
        self._aead = _object_cipher(key.data_key, salt)
        self._aad = _aad(self.header, object_key)
        self.plain = 0

    def seal(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        yield self.header
        buf, index = bytearray(), 0
        for piece in chunks:
            self.plain += len(piece)
            buf += piece
            if len(buf) > CHUNK:
                view, pos = memoryview(buf), 0
                try:
                    while len(buf) - pos > CHUNK:  # never the last: more follows, or the end does
                        yield self._aead.encrypt(_nonce(self._prefix, index, False), view[pos:pos + CHUNK],
                                                 self._aad)
                        pos, index = pos + CHUNK, index + 1
                finally:
                    view.release()
                del buf[:pos]
        yield self._aead.encrypt(_nonce(self._prefix, index, True), bytes(buf), self._aad)


def encrypt_bytes(key: MasterKey, object_key: str, data: bytes) -> bytes:
    return b"".join(Sealer(key, object_key).seal([data]))


@dataclass(frozen=True)
class Header:
    version: int
    algorithm: int
    key_id: str
    salt: bytes
    prefix: bytes
    raw: bytes


def parse_header(raw: bytes, what: str) -> Header:
    if len(raw) < HEADER_SIZE or not raw.startswith(MAGIC):
        raise NotEncrypted(f"{what} is not encrypted (no {MAGIC.decode()} header): refused, an "
                           "encrypted repository never reads plaintext objects")
    magic, version, algorithm, key_id, salt, prefix = HEADER.unpack(raw[:HEADER_SIZE])
    if version != VERSION or algorithm != AES_256_GCM:
        raise EncryptionError(f"{what}: encryption format version {version}, algorithm {algorithm} "
                              f"not supported (this tool reads {VERSION}/{AES_256_GCM})")
    return Header(version, algorithm, key_id.hex(), salt, prefix, raw[:HEADER_SIZE])


def read_header(chunks: Iterator[bytes], what: str) -> tuple[Header, bytes]:
    """The header from the front of a stream, and the bytes read past it."""
    got = bytearray()
    for piece in chunks:
        got += piece
        if len(got) >= HEADER_SIZE:
            break
    return parse_header(bytes(got), what), bytes(got[HEADER_SIZE:])


def open_stream(header: Header, keyring: Keyring, object_key: str, rest: bytes,
                chunks: Iterator[bytes], what: str) -> Iterator[bytes]:
    """Decrypt what follows ``header``: the key is chosen first (``KeyUnavailable`` at once), then
    chunks are checked and yielded as they come."""
    key = keyring.for_id(header.key_id, what)
    return _unseal(header, _object_cipher(key.data_key, header.salt), _aad(header.raw, object_key),
                   rest, chunks, what)


def _unseal(header: Header, aead: AESGCM, aad: bytes, rest: bytes, chunks: Iterator[bytes],
            what: str) -> Iterator[bytes]:
    buf, index = bytearray(rest), 0

    def fail(last: bool) -> IntegrityError:
        return IntegrityError(f"{what}: chunk {index}{' (last)' if last else ''} fails authentication: "
                              "the object was altered, cut short, extended or reordered in the repository")

    def drain() -> Iterator[bytes]:
        nonlocal index
        view, pos = memoryview(buf), 0
        try:
            while len(buf) - pos > SEALED:  # more follows: not the last chunk
                try:
                    plain = aead.decrypt(_nonce(header.prefix, index, False), view[pos:pos + SEALED], aad)
                except InvalidTag:
                    raise fail(False) from None
                pos, index = pos + SEALED, index + 1
                yield plain
        finally:
            view.release()
        del buf[:pos]

    yield from drain()
    for piece in chunks:
        buf += piece
        if len(buf) > SEALED:
            yield from drain()
    if len(buf) < TAG:
        raise IntegrityError(f"{what}: ends without its last chunk: the object was cut short")
    try:
        yield aead.decrypt(_nonce(header.prefix, index, True), bytes(buf), aad)
    except InvalidTag:
        raise fail(True) from None


def decrypt_bytes(keyring: Keyring, object_key: str, data: bytes, what: str = "object") -> bytes:
    header, rest = read_header(iter([data]), what)
    return b"".join(open_stream(header, keyring, object_key, rest, iter(()), what))
