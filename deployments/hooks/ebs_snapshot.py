"""Example cold-backup hook: EBS snapshots of the data volumes while the stack is stopped.

EXAMPLE ONLY — not run by the test suite, never run against AWS by this project. It shows how the
reference guide's "virtual servers" option (a hypervisor or volume snapshot of stopped services)
plugs into ``cold_backup`` through hooks. Install it on a node that has AWS credentials (an instance
profile allowed ``ec2:CreateSnapshot``, ``ec2:CreateTags``, ``ec2:DescribeSnapshots``,
``ec2:DescribeVolumes``) and declare, in the stack file::

    hooks:
      after_stop:          # services stopped and drained: the volumes are consistent
        - node: hive1
          argv: [python3, /opt/thehive-backup/ebs_snapshot.py, snapshot,
                 --backup-id, "{backup_id}", --stack, "{stack}",
                 --volume, vol-0123456789abcdef0, --volume, vol-0fedcba9876543210]
      after_start:         # services back; wait for the snapshots to complete (no downtime)
        - node: hive1
          argv: [python3, /opt/thehive-backup/ebs_snapshot.py, wait, --backup-id, "{backup_id}"]
          timeout: 7200

An EBS snapshot is point-in-time as soon as ``CreateSnapshot`` returns, so the services can start
again at once; ``wait`` only confirms that every snapshot reached ``completed`` (it exits non-zero
if one failed, which fails the flow run after the stack is up). Use ``--tag-only`` to snapshot every
volume attached to this instance that carries the tag ``thehive-backup=true`` instead of listing
volume ids. The same pattern fits a hypervisor (``virsh snapshot-create-as``, ``govc snapshot.create``).
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request

TAG = "thehive-backup:backup-id"


def _ec2(region: str | None):
    import boto3  # a dependency of thehive-backup; imported late so --help works without it

    return boto3.client("ec2", region_name=region or _instance_region())


def _instance_metadata(path: str) -> str:
    """IMDSv2: a session token first, then the value."""
    token_req = urllib.request.Request("http://169.254.169.254/latest/api/token", method="PUT",
                                       headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    with urllib.request.urlopen(token_req, timeout=2) as resp:
        token = resp.read().decode()
    req = urllib.request.Request(f"http://169.254.169.254/latest/{path}",
                                 headers={"X-aws-ec2-metadata-token": token})
    with urllib.request.urlopen(req, timeout=2) as resp:
        return resp.read().decode()


def _instance_region() -> str:
    return json.loads(_instance_metadata("dynamic/instance-identity/document"))["region"]


def tagged_volumes(ec2) -> list[str]:
    instance = _instance_metadata("meta-data/instance-id")
    pages = ec2.get_paginator("describe_volumes").paginate(Filters=[
        {"Name": "attachment.instance-id", "Values": [instance]},
        {"Name": "tag:thehive-backup", "Values": ["true"]}])
    return [v["VolumeId"] for page in pages for v in page["Volumes"]]


def snapshot(ec2, volumes: list[str], backup_id: str, stack: str) -> list[str]:
    """One snapshot per volume, tagged with the backup id so ``wait`` and pruning can find them."""
    ids = []
    for volume in volumes:
        snap = ec2.create_snapshot(
            VolumeId=volume, Description=f"thehive-backup {stack} {backup_id}",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": [
                {"Key": TAG, "Value": backup_id}, {"Key": "thehive-backup:stack", "Value": stack}]}])
        ids.append(snap["SnapshotId"])
        print(f"{volume}: snapshot {snap['SnapshotId']} {snap['State']}")
    return ids


def wait(ec2, backup_id: str) -> int:
    snaps = ec2.describe_snapshots(OwnerIds=["self"],
                                   Filters=[{"Name": f"tag:{TAG}", "Values": [backup_id]}])["Snapshots"]
    if not snaps:
        print(f"no snapshot tagged {TAG}={backup_id}", file=sys.stderr)
        return 1
    ids = [s["SnapshotId"] for s in snaps]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=ids,
                                              WaiterConfig={"Delay": 15, "MaxAttempts": 480})
    for s in ec2.describe_snapshots(SnapshotIds=ids)["Snapshots"]:
        print(f"{s['VolumeId']}: {s['SnapshotId']} {s['State']} {s.get('Progress', '')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", help="AWS region (default: this instance's)")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("snapshot", help="snapshot the volumes (run as an after_stop hook)")
    s.add_argument("--backup-id", required=True)
    s.add_argument("--stack", default="thehive")
    s.add_argument("--volume", action="append", default=[], help="EBS volume id (repeatable)")
    s.add_argument("--tag-only", action="store_true",
                   help="snapshot the volumes of this instance tagged thehive-backup=true")
    w = sub.add_parser("wait", help="wait until the snapshots are completed (after_start hook)")
    w.add_argument("--backup-id", required=True)
    args = parser.parse_args(argv)

    ec2 = _ec2(args.region)
    if args.command == "snapshot":
        volumes = args.volume + (tagged_volumes(ec2) if args.tag_only else [])
        if not volumes:
            parser.error("give --volume or --tag-only")
        snapshot(ec2, volumes, args.backup_id, args.stack)
        return 0
    return wait(ec2, args.backup_id)


if __name__ == "__main__":
    sys.exit(main())
