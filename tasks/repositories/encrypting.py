"""``EncryptingRepository``: every object encrypted on the runner before it reaches the repository.

A wrapper like the retrying one, assembled by ``factory.open_repository`` when the stack file has
``repository.encryption``, so every flow gets it without knowing. It sits outside the retry layer:
retries re-send the same ciphertext. Sizes it reports (``put``, ``stat``, ``list``) are of the
plaintext, like the manifest's, so the validator and the catalog need no change. The lock
(``locks/``) stays plaintext, readable by an operator without the key (docs/FORMAT.md).
"""
from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from config.model import Encryption, SecretNotFound
from tasks.repositories.base import ObjectInfo, Repository, RepositoryError
from tasks.repositories.crypto import (
    EncryptionError,
    Keyring,
    MasterKey,
    Sealer,
    encrypt_bytes,
    open_stream,
    parse_key,
    plaintext_size,
    read_header,
    stored_size,
)

PLAINTEXT_PREFIXES = ("locks/",)


def keyring_from(settings: Encryption) -> Keyring:
    """Resolve the references of the stack file. The current key must be there (every flow fails
    when it opens the repository otherwise); old keys that cannot be resolved are only named when
    an object under them is read."""
    try:
        current = MasterKey.from_bytes(
            parse_key(settings.key.resolve().get_secret_value(), f"repository.encryption.key ({settings.key})"),
            "key")
    except SecretNotFound as exc:
        raise EncryptionError(f"repository.encryption.key: {exc}") from None
    old, unresolved = [], []
    for i, ref in enumerate(settings.old_keys):
        source = f"old_keys[{i}]"
        try:
            old.append(MasterKey.from_bytes(
                parse_key(ref.resolve().get_secret_value(), f"repository.encryption.{source} ({ref})"), source))
        except SecretNotFound as exc:
            unresolved.append(f"{source} ({exc})")
    return Keyring(current, tuple(old), tuple(unresolved))


def _plain(key: str) -> bool:
    return key.startswith(PLAINTEXT_PREFIXES)


class EncryptingRepository(Repository):
    """Encrypts on put, decrypts (and authenticates) on get; see docs/FORMAT.md, "Encryption"."""

    def __init__(self, inner: Repository, keyring: Keyring):
        self.inner, self.keyring = inner, keyring
        self.url = inner.url

    def _what(self, key: str) -> str:
        return f"{self.url}/{key}"

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        if _plain(key):
            return self.inner.put(key, chunks)
        sealer = Sealer(self.keyring.current, key)
        written = self.inner.put(key, sealer.seal(chunks))
        if written != stored_size(sealer.plain):
            raise RepositoryError(f"{self._what(key)}: stored {written} bytes for {sealer.plain} of plaintext, "
                                  f"expected {stored_size(sealer.plain)}")
        return sealer.plain

    def put_bytes(self, key: str, data: bytes) -> int:
        if _plain(key):
            return self.inner.put_bytes(key, data)
        self.inner.put_bytes(key, encrypt_bytes(self.keyring.current, key, data))
        return len(data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if _plain(key):
            return self.inner.put_if_absent(key, data)
        return self.inner.put_if_absent(key, encrypt_bytes(self.keyring.current, key, data))

    @contextmanager
    def get(self, key: str) -> Iterator[Iterator[bytes]]:
        """The header is read at once: a key not available or a plaintext object fails here,
        before the caller has consumed anything."""
        with self.inner.get(key) as chunks:
            if _plain(key):
                yield chunks
                return
            stream = iter(chunks)
            header, rest = read_header(stream, self._what(key))
            yield open_stream(header, self.keyring, key, rest, stream, self._what(key))

    def key_id_of(self, key: str) -> str:
        """The key id an object was written under (reads its header only)."""
        with self.inner.get(key) as chunks:
            return read_header(iter(chunks), self._what(key))[0].key_id

    def _info(self, info: ObjectInfo) -> ObjectInfo:
        if _plain(info.key):
            return info
        size = plaintext_size(info.size)
        return ObjectInfo(info.key, size if size >= 0 else info.size)  # too small to be ours: as stored

    def stat(self, key: str) -> ObjectInfo | None:
        info = self.inner.stat(key)
        return None if info is None else self._info(info)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return (self._info(info) for info in self.inner.list(prefix))

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def clean_temporary(self, older_than: float) -> builtins.list[str]:
        return self.inner.clean_temporary(older_than)

    def close(self) -> None:
        self.inner.close()
