"""A repository in an S3 bucket (AWS or any S3-compatible store such as MinIO)."""
from __future__ import annotations

import io
import time
from contextlib import contextmanager

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from config.model import S3Settings
from tasks.repositories.base import (
    ObjectInfo,
    ObjectNotFound,
    Repository,
    RepositoryError,
    TransientRepositoryError,
    validate_key,
)

CHUNK = 1024 * 1024
TRANSFER = TransferConfig(multipart_threshold=16 * CHUNK, multipart_chunksize=16 * CHUNK,
                          max_concurrency=4)


def s3_client(settings: S3Settings):
    """A boto3 client from the stack's settings; credentials resolved from their references."""
    kwargs = {}
    if settings.access_key_id is not None and settings.secret_access_key is not None:
        kwargs = dict(
            aws_access_key_id=settings.access_key_id.resolve().get_secret_value(),
            aws_secret_access_key=settings.secret_access_key.resolve().get_secret_value(),
        )
    return boto3.client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region,
        config=botocore.config.Config(
            # One attempt: RetryingRepository is the repository's one retry layer (tasks/retry.py).
            s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=15, read_timeout=120,
        ),
        **kwargs,
    )


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of chunks, for boto3's upload_fileobj."""

    def __init__(self, chunks):
        self._chunks, self._buf, self.count = iter(chunks), b"", 0

    def readable(self):
        return True

    def readinto(self, b):
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        self.count += n
        return n


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout")
    return isinstance(exc, (botocore.exceptions.EndpointConnectionError,
                            botocore.exceptions.ConnectionClosedError,
                            botocore.exceptions.ConnectTimeoutError,
                            botocore.exceptions.ReadTimeoutError,
                            botocore.exceptions.ResponseStreamingError,
                            botocore.exceptions.IncompleteReadError))


class S3Repository(Repository):
    def __init__(self, settings: S3Settings, client=None):
        self.bucket, self.prefix = settings.bucket, settings.prefix
        self.url = f"s3://{settings.bucket}/{settings.prefix}"
        self.client = client or s3_client(settings)
        self.write_args = settings.write_args()

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _error(self, what: str, exc: Exception) -> RepositoryError:
        cls = TransientRepositoryError if _is_transient(exc) else RepositoryError
        return cls(f"{what} {self.url}: {exc}")

    def put(self, key, chunks):
        """Multipart upload: the object only exists once the upload is completed."""
        reader = _ChunkReader(chunks)
        try:
            self.client.upload_fileobj(io.BufferedReader(reader, CHUNK), self.bucket,
                                       self._key(key), Config=TRANSFER, ExtraArgs=self.write_args)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                boto3.exceptions.S3UploadFailedError) as exc:
            raise self._error(f"writing {key} to", exc) from exc
        return reader.count

    def put_if_absent(self, key, data):
        """A conditional PUT (``If-None-Match: *``, S3 since 2024, MinIO, moto): 412 when the key
        exists. A store that ignores the header would overwrite: preflight probes for that."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*",
                                   **self.write_args)
            return True
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = exc.response.get("Error", {}).get("Code", "")
            if status == 412 or code == "PreconditionFailed":
                return False
            if status == 409:  # ConditionalRequestConflict: a concurrent conditional write; retry
                raise TransientRepositoryError(f"creating {key} in {self.url}: {exc}") from exc
            raise self._error(f"creating {key} in", exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(f"creating {key} in", exc) from exc

    def clean_temporary(self, older_than):
        """Abort multipart uploads (S3's temporary state: parts that take space but are not
        objects) initiated more than ``older_than`` seconds ago under our prefix."""
        cutoff, removed = time.time() - older_than, []
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() < cutoff:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        removed.append(upload["Key"][len(self.prefix):])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error("cleaning multipart uploads of", exc) from exc
        return removed

    @contextmanager
    def get(self, key):
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise ObjectNotFound(f"{self.url}{key} does not exist") from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(f"reading {key} from", exc) from exc
        def chunks():
            try:
                yield from body.iter_chunks(CHUNK)
            except botocore.exceptions.BotoCoreError as exc:  # the stream broke mid-read
                raise self._error(f"reading {key} from", exc) from exc

        try:
            yield chunks()
        finally:
            body.close()

    def stat(self, key):
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error(f"stat {key} in", exc) from exc
        except botocore.exceptions.BotoCoreError as exc:  # unreachable, timed out
            raise self._error(f"stat {key} in", exc) from exc
        return ObjectInfo(key, head["ContentLength"])

    def list(self, prefix=""):
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][len(self.prefix):], obj["Size"])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error("listing", exc) from exc

    def delete(self, key):
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(f"deleting {key} from", exc) from exc
