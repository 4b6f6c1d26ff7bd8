"""Attachments kept in an S3 bucket (``attachments.kind: s3``): backed up object by object and
restored against the real S3 API server, every object compared by SHA-256."""
from __future__ import annotations

import hashlib
import os

import pytest

from flows.hot_backup import hot_backup
from flows.restore import restore

pytestmark = pytest.mark.usefixtures("prefect_server")

KEYS = ["case-1/evidence.bin", "case-1/notes with spaces.txt", "case-2/deep/er/blob", "top.eml"]


def bucket_digests(s3, bucket: str) -> dict[str, str]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = hashlib.sha256(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()).hexdigest()
    return out


def test_bucket_attachments_round_trip_and_mirror(real_stack, make_stack):
    s3 = real_stack.s3.client()
    settings = real_stack.repository("s3", "thehive-attachments")  # a fresh bucket
    attachments = {k: v for k, v in settings.items() if k != "kind"} | {"kind": "s3"}
    for i, key in enumerate(KEYS):
        s3.put_object(Bucket=settings["bucket"], Key=key, Body=os.urandom(1000 + 70_000 * i))
    before = bucket_digests(s3, settings["bucket"])
    path, _ = make_stack("local", with_elasticsearch=False, with_thehive=False, attachments=attachments)

    made = hot_backup(stack=str(path), components=["files"])
    assert made["objects"] == len(KEYS) + 1  # every object and the inventory

    s3.put_object(Bucket=settings["bucket"], Key=KEYS[0], Body=b"tampered")
    s3.delete_object(Bucket=settings["bucket"], Key=KEYS[2])
    s3.put_object(Bucket=settings["bucket"], Key="added-after.bin", Body=b"new")
    report = restore(stack=str(path), backup_id=made["backup_id"], components=["files"], confirm=True)
    assert report["files"]  # the attachments step ran and reported
    after = bucket_digests(s3, settings["bucket"])
    assert {k: after[k] for k in KEYS} == before and after["added-after.bin"]  # additive by default

    restore(stack=str(path), backup_id=made["backup_id"], components=["files"], mirror_files=True,
            confirm=True)
    assert bucket_digests(s3, settings["bucket"]) == before
