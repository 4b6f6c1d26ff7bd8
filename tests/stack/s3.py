"""A real S3 API server on loopback for the test stack: moto in server mode.

The backup tool and the TheHive stand-in talk to it over HTTP with boto3 exactly as they would to
AWS or MinIO; nothing is patched in-process. It serves both as a backup repository and as TheHive's
attachment bucket. Data lives in the server's memory: a restart empties it.
"""
from __future__ import annotations

import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.client import BaseClient
from botocore.config import Config

from tests.stack.proc import Service, port_open, wait_until, write_service


@dataclass(frozen=True)
class S3Server:
    """The S3 endpoint and the credentials clients use (moto accepts any, but clients must sign)."""

    address: str
    port: int
    endpoint_url: str
    access_key: str
    secret_key: str
    service: Service
    region: str = "us-east-1"

    def start(self, timeout: float = 60) -> None:
        self.service.start()
        wait_until(self._answers, f"S3 API at {self.endpoint_url}", timeout, self.service, interval=0.2)

    def stop(self) -> None:
        self.service.stop()

    def client(self) -> BaseClient:
        """A boto3 S3 client with path-style addressing (no per-bucket DNS names on loopback)."""
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def reset(self) -> None:
        """Delete every bucket with its objects, versions and pending multipart uploads, via the S3 API."""
        s3 = self.client()
        for bucket in (b["Name"] for b in s3.list_buckets().get("Buckets", [])):
            for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
                for upload in page.get("Uploads", []):
                    s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                          for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
                if doomed:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed, "Quiet": True})
            s3.delete_bucket(Bucket=bucket)

    def _answers(self) -> bool:
        if not port_open(self.address, self.port):
            return False
        try:
            urllib.request.urlopen(f"{self.endpoint_url}/", timeout=5).close()
        except urllib.error.HTTPError:  # any HTTP answer means the server is up
            return True
        except OSError:
            return False
        return True


def make_s3(root: Path, *, address: str, port: int = 9000) -> S3Server:
    """Prepare (not start) a moto S3 server on ``address:port``; its scripts and log live in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    service = write_service(root, "s3", [sys.executable, "-m", "moto.server", "-H", address, "-p", str(port)],
                            grace_seconds=10)
    return S3Server(address, port, f"http://{address}:{port}", "thehive-backup-test", "thehive-backup-secret",
                    service)
