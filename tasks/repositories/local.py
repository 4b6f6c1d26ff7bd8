"""A repository in a local (or NFS-mounted) folder."""
from __future__ import annotations

import errno
import os
import time
import uuid
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from tasks.repositories.base import (
    DIR_MODE,
    FILE_MODE,
    ObjectInfo,
    ObjectNotFound,
    Repository,
    RepositoryError,
    TransientRepositoryError,
    Unnamed,
    validate_key,
)

CHUNK = 1024 * 1024
TEMP_PREFIX = ".tmp-"


def _error(exc: OSError, what: str) -> RepositoryError:
    transient = exc.errno in (errno.EIO, errno.EAGAIN, errno.ESTALE, errno.ETIMEDOUT)
    return (TransientRepositoryError if transient else RepositoryError)(f"{what}: {exc}")


class LocalRepository(Repository):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    @staticmethod
    def _make_dirs(folder: Path) -> None:
        """Every missing level created 0700 (``mkdir(parents=True)`` would give parents the umask's mode)."""
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for level in reversed(missing):
            try:
                level.mkdir(mode=DIR_MODE)
            except FileExistsError:
                pass

    @staticmethod
    def _create(tmp: Path):
        return os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb")

    def put(self, key, chunks):
        """Temp file in the same folder, fsync, rename, fsync the folder (restic's Save)."""
        path = self._path(key)
        tmp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        try:
            self._make_dirs(path.parent)
            written = self._write(tmp, chunks)
            os.replace(tmp, path)
            self._fsync_dir(path.parent)
        except OSError as exc:
            raise _error(exc, f"writing {path}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return written

    names_after = True

    @contextmanager
    def put_unnamed(self, near, chunks):
        folder = self._path(near.rstrip("/"))
        tmp = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            try:
                self._make_dirs(folder)
                written = self._write(tmp, chunks)
            except OSError as exc:
                raise _error(exc, f"writing {tmp}") from exc
            yield Unnamed(written, partial(self._name, tmp))
        finally:
            tmp.unlink(missing_ok=True)

    def _name(self, tmp: Path, key: str) -> None:
        path = self._path(key)
        try:
            self._make_dirs(path.parent)
            os.replace(tmp, path)
            self._fsync_dir(path.parent)
        except OSError as exc:
            raise _error(exc, f"naming {tmp} {path}") from exc

    def _write(self, tmp: Path, chunks) -> int:
        written = 0
        with self._create(tmp) as f:
            for chunk in chunks:
                f.write(chunk)
                written += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        return written

    def put_if_absent(self, key, data):
        """Temp file, fsync, then ``link`` to the key: link(2) fails if the name exists, atomically,
        on local filesystems and NFS alike (``rename`` would replace it)."""
        path = self._path(key)
        tmp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        try:
            self._make_dirs(path.parent)
            with self._create(tmp) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            self._fsync_dir(path.parent)
            return True
        except OSError as exc:
            raise _error(exc, f"creating {path}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def clean_temporary(self, older_than):
        """``.tmp-*`` files of writes that never finished (a killed run), by modification time."""
        cutoff, removed = time.time() - older_than, []
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                full = Path(dirpath) / name
                try:
                    if name.startswith(TEMP_PREFIX) and full.stat().st_mtime < cutoff:
                        full.unlink()
                        removed.append(full.relative_to(self.root).as_posix())
                except FileNotFoundError:
                    continue  # finished or removed meanwhile
        return removed

    @contextmanager
    def get(self, key):
        path = self._path(key)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.url}/{key} does not exist") from None
        except OSError as exc:
            raise _error(exc, f"reading {path}") from exc
        with f:
            yield iter(lambda: f.read(CHUNK), b"")

    def stat(self, key):
        try:
            return ObjectInfo(key, self._path(key).stat().st_size)
        except FileNotFoundError:
            return None

    def list(self, prefix=""):
        base = self.root
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield ObjectInfo(key, full.stat().st_size)

    def delete(self, key):
        self._path(key).unlink(missing_ok=True)

