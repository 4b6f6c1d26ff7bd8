"""Build the configured repository, wrapped so idempotent calls retry on transient faults,
encrypted when the stack file asks for it (``EncryptingRepository``, outside the retries), and
held under a bandwidth cap when it sets one (``ThrottledRepository``, under the retries)."""
from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager

from config.model import LocalRepository as LocalSettings
from config.model import S3Repository as S3RepoSettings
from config.model import SftpRepository as SftpSettings
from config.model import Stack
from tasks.repositories.base import Repository, RepositoryError, RetriesExhausted
from tasks.repositories.encrypting import EncryptingRepository, keyring_from
from tasks.repositories.throttled import ThrottledRepository, shared_bucket


class RetryingRepository(Repository):
    """The one retry layer of repository calls (``tasks/retry.py``): stat/list/get/delete/
    put_bytes/put_if_absent/clean_temporary retried with backoff on transient errors, then
    ``RetriesExhausted`` (definite, so no task retries the call again).

    ``put`` consumes a one-shot stream, so it is not retried here: the task that produced the
    stream retries the whole step (re-reading the source), which is the only correct place.
    Nor is a stream that breaks after ``get`` opened it: its reader is that task too.
    """

    def __init__(self, inner: Repository, attempts: int = 4, backoff: float = 1.0):
        self.inner, self.attempts, self.backoff = inner, attempts, backoff
        self.url = inner.url

    def _retry(self, fn, *args):
        for attempt in range(self.attempts):
            try:
                return fn(*args)
            except RepositoryError as exc:
                if not exc.transient:
                    raise
                if attempt == self.attempts - 1:
                    raise RetriesExhausted(f"{exc} (after {self.attempts} attempts)") from exc
                time.sleep(self.backoff * 2**attempt)

    def put(self, key, chunks):
        return self.inner.put(key, chunks)

    @property
    def names_after(self):  # type: ignore[override]
        return self.inner.names_after

    def put_unnamed(self, near, chunks):
        """Not retried, like ``put``."""
        return self.inner.put_unnamed(near, chunks)

    def put_bytes(self, key, data):
        """Retried, unlike ``put``: bytes can be sent again, and an atomic put of the same bytes
        twice leaves the same object (the manifest, ``started.json``, a lock refresh)."""
        return self._retry(self.inner.put_bytes, key, data)

    @contextmanager
    def get(self, key):
        with ExitStack() as stack:
            yield self._retry(lambda: stack.enter_context(self.inner.get(key)))

    def stat(self, key):
        return self._retry(self.inner.stat, key)

    def list(self, prefix=""):
        return iter(self._retry(lambda: list(self.inner.list(prefix))))

    def delete(self, key):
        return self._retry(self.inner.delete, key)

    def put_if_absent(self, key, data):
        """Retried: the data is bytes, not a stream. A retry after a create that did happen but
        whose answer was lost returns False; the lock reads the object back to see whose it is."""
        return self._retry(self.inner.put_if_absent, key, data)

    def clean_temporary(self, older_than):
        return self._retry(self.inner.clean_temporary, older_than)

    def close(self):
        self.inner.close()


def open_repository(stack: Stack) -> Repository:
    settings = stack.repository
    keyring = None
    if settings.encryption is not None:  # first: a missing key fails before any connection
        keyring = keyring_from(settings.encryption)
    if isinstance(settings, LocalSettings):
        from tasks.repositories.local import LocalRepository

        inner: Repository = LocalRepository(settings.path)
    elif isinstance(settings, SftpSettings):
        from tasks.repositories.sftp import SftpRepository

        inner = SftpRepository(settings.host, settings.path, settings.ssh)
    elif isinstance(settings, S3RepoSettings):
        from tasks.repositories.s3 import S3Repository

        inner = S3Repository(settings)
    else:  # pragma: no cover - the model's discriminator makes this unreachable
        raise TypeError(f"unknown repository kind {settings!r}")
    if settings.max_mib_per_second is not None:  # under the retries: a re-sent byte counts too
        inner = ThrottledRepository(inner, shared_bucket(inner.url, settings.max_mib_per_second))
    retrying = RetryingRepository(inner)
    return retrying if keyring is None else EncryptingRepository(retrying, keyring)
