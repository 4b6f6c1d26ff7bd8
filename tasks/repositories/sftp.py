"""A repository on an SFTP server (a backup host that is not a Cassandra node)."""
from __future__ import annotations

import posixpath
import stat as stat_mod
import time
import uuid
from contextlib import contextmanager
from functools import partial

import paramiko

from config.model import SshSettings
from tasks.hosts import HostError, connect_ssh
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


class SftpRepository(Repository):
    def __init__(self, host: str, root: str, ssh: SshSettings):
        self.host, self.root, self.ssh = host, root.rstrip("/") or "/", ssh
        self.url = f"sftp://{ssh.user}@{host}:{ssh.port}{self.root}"
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._client = connect_ssh(self.host, self.ssh)
                self._sftp = self._client.open_sftp()
            except HostError as exc:
                cls = TransientRepositoryError if exc.transient else RepositoryError
                raise cls(f"{self.url}: {exc}") from exc
        return self._sftp

    def close(self):
        if self._client is not None:
            self._client.close()
        self._client = self._sftp = None

    def _path(self, key: str) -> str:
        return posixpath.join(self.root, validate_key(key))

    def _mkdirs(self, path: str) -> None:
        missing = []
        while path not in ("", "/"):
            try:
                self.sftp.stat(path)
                break
            except FileNotFoundError:
                missing.append(path)
                path = posixpath.dirname(path)
        for p in reversed(missing):
            try:
                self.sftp.mkdir(p, mode=DIR_MODE)
            except OSError:
                if not stat_mod.S_ISDIR(self.sftp.stat(p).st_mode):
                    raise

    def _guard(self, what: str, exc: Exception) -> RepositoryError:
        if isinstance(exc, (paramiko.SSHException, EOFError, ConnectionError, TimeoutError)):
            self.close()
            return TransientRepositoryError(f"{what}: {exc}")
        return RepositoryError(f"{what}: {exc}")

    def put(self, key, chunks):
        """Write to a temporary name opened exclusively, then posix-rename over the key."""
        path = self._path(key)
        tmp = posixpath.join(posixpath.dirname(path), f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            self._mkdirs(posixpath.dirname(path))
            written = self._write(tmp, chunks)
            self.sftp.posix_rename(tmp, path)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self._remove_quietly(tmp)
            raise self._guard(f"writing {self.url}/{key}", exc) from exc
        except BaseException:
            self._remove_quietly(tmp)
            raise
        return written

    names_after = True

    @contextmanager
    def put_unnamed(self, near, chunks):
        folder = self._path(near.rstrip("/"))
        tmp = posixpath.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            try:
                self._mkdirs(folder)
                written = self._write(tmp, chunks)
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise self._guard(f"writing {self.url}/{near}", exc) from exc
            yield Unnamed(written, partial(self._name, tmp))
        finally:
            self._remove_quietly(tmp)

    def _name(self, tmp: str, key: str) -> None:
        path = self._path(key)
        try:
            self._mkdirs(posixpath.dirname(path))
            self.sftp.posix_rename(tmp, path)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise self._guard(f"naming {self.url}/{key}", exc) from exc

    def _write(self, tmp: str, chunks) -> int:
        written = 0
        with self.sftp.open(tmp, "wxb") as f:  # O_CREAT|O_EXCL: never reuse a name
            f.chmod(FILE_MODE)  # before any byte is written (paramiko's open takes no mode)
            f.set_pipelined(True)
            for chunk in chunks:
                f.write(chunk)
                written += len(chunk)
        if self.sftp.stat(tmp).st_size != written:
            raise RepositoryError(f"{self.url}: short write of {tmp}")
        return written

    def _remove_quietly(self, path: str) -> None:
        """A temporary file removed if it is there (renamed, or never made: nothing to do)."""
        try:
            self.sftp.remove(path)
        except Exception:
            pass

    def put_if_absent(self, key, data):
        """Temp file, then a plain SFTP rename (SSH_FXP_RENAME, not posix-rename): OpenSSH's server
        does it with link(2)+unlink, so it fails when the target exists — atomically."""
        path = self._path(key)
        tmp = posixpath.join(posixpath.dirname(path), f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            self._mkdirs(posixpath.dirname(path))
            with self.sftp.open(tmp, "wxb") as f:
                f.chmod(FILE_MODE)
                f.write(data)
            try:
                self.sftp.rename(tmp, path)
                return True
            except OSError:
                if self.stat(key) is not None:
                    return False  # the name was taken: that is the answer, not an error
                raise
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise self._guard(f"creating {self.url}/{key}", exc) from exc
        finally:
            try:
                self.sftp.remove(tmp)
            except Exception:
                pass  # renamed (gone) or the connection is lost

    def clean_temporary(self, older_than):
        """``.tmp-*`` files of writes that never finished, by modification time (server clock)."""
        cutoff, removed = time.time() - older_than, []
        try:
            for key, attr in self._walk(""):
                name = key.rsplit("/", 1)[-1]
                if name.startswith(TEMP_PREFIX) and (attr.st_mtime or 0) < cutoff:
                    self.sftp.remove(posixpath.join(self.root, key))
                    removed.append(key)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise self._guard(f"cleaning {self.url}", exc) from exc
        return removed

    def _walk(self, prefix: str):
        """(key, attributes) of every file under the root whose key may start with ``prefix``,
        temporary ones included."""
        def walk(rel: str):
            try:
                entries = self.sftp.listdir_attr(posixpath.join(self.root, rel) if rel else self.root)
            except FileNotFoundError:
                return
            for e in entries:
                key = f"{rel}/{e.filename}" if rel else e.filename
                if stat_mod.S_ISDIR(e.st_mode):
                    if key.startswith(prefix) or prefix.startswith(key + "/"):
                        yield from walk(key)
                elif key.startswith(prefix):
                    yield key, e

        yield from walk("")

    @contextmanager
    def get(self, key):
        path = self._path(key)
        try:
            f = self.sftp.open(path, "rb")
            f.prefetch()
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.url}/{key} does not exist") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise self._guard(f"reading {self.url}/{key}", exc) from exc
        def chunks():
            try:
                yield from iter(lambda: f.read(CHUNK), b"")
            except (OSError, paramiko.SSHException, EOFError) as exc:  # broke mid-read
                raise self._guard(f"reading {self.url}/{key}", exc) from exc

        with f:
            yield chunks()

    def stat(self, key):
        try:
            return ObjectInfo(key, self.sftp.stat(self._path(key)).st_size)
        except FileNotFoundError:
            return None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise self._guard(f"stat {self.url}/{key}", exc) from exc

    def list(self, prefix=""):
        for key, e in self._walk(prefix):
            if not e.filename.startswith(TEMP_PREFIX):
                yield ObjectInfo(key, e.st_size)

    def delete(self, key):
        try:
            self.sftp.remove(self._path(key))
        except FileNotFoundError:
            pass

