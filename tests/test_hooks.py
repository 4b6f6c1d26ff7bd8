"""The example EBS snapshot hook, against the S3/EC2 API server of the test stack (never AWS)."""
from __future__ import annotations

import boto3

from deployments.hooks import ebs_snapshot


def test_ebs_snapshot_hook_example(real_stack, monkeypatch):
    server = real_stack.s3  # moto's server answers the EC2 API as well
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    volume = ec2.create_volume(AvailabilityZone="eu-west-1a", Size=10)["VolumeId"]
    assert ebs_snapshot.main(["--region", "eu-west-1", "snapshot", "--backup-id", "cold-x",
                              "--volume", volume]) == 0
    snaps = ec2.describe_snapshots(Filters=[{"Name": f"tag:{ebs_snapshot.TAG}",
                                             "Values": ["cold-x"]}])["Snapshots"]
    assert [s["VolumeId"] for s in snaps] == [volume]
    assert ebs_snapshot.main(["--region", "eu-west-1", "wait", "--backup-id", "cold-x"]) == 0
    assert ebs_snapshot.main(["--region", "eu-west-1", "wait", "--backup-id", "cold-y"]) == 1
