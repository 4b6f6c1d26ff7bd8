"""The reference guide's example backup script, run on the harness's nodes as the guide prints it.

``GUIDE_BACKUP_SCRIPT`` is the "Example of script to generate backups of TheHive keyspace" of the
guide's "Hot backup and restore" section, verbatim. ``guide_script`` makes only the edits the
guide asks of its reader ("Complete variables before running") and those the harness needs: the
node's nodetool wrapper for ``nodetool`` (its JMX port is not 7199), the node's data folder for
``/var/lib/cassandra/data``, a shared folder for ``/var/lib/cassandra/archive_backup`` (which
stands for the copy every node's ``scp`` would make, so the scp line is dropped), HOSTNAME set to
the node's name and a fixed SNAPSHOT_DATE. Everything else runs as printed, including the
``tar`` calls that leave empty archives for table folders without a snapshot.
"""
from __future__ import annotations

import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.stack.cassandra import CassandraCluster, CassandraNode

GUIDE_BACKUP_SCRIPT = r"""#!/bin/bash

## Create a tbz archive containing the snapshot
## This script should be executed on each node of the cluster

## Complete variables before running:
HOSTNAME=$(hostname)
SNAPSHOT_DATE="$(date +%F)"

REMOTE_USER=<remote_user_to_change>
REMOTE_HOST=<remote_host_to_change>

## Perform a backup for all keyspaces (system included)
nodetool snapshot -t ${SNAPSHOT_DATE}

## Navigate to the snapshot directory

find /var/lib/cassandra/data -name snapshots

# Archive snapshot files
mkdir -p /var/lib/cassandra/archive_backup/$HOSTNAME/${SNAPSHOT_DATE}
cd /var/lib/cassandra/archive_backup/$HOSTNAME/${SNAPSHOT_DATE}

for KEYSPACE in $(ls /var/lib/cassandra/data); do
mkdir $KEYSPACE
cd $KEYSPACE
for TABLE in $(ls /var/lib/cassandra/data/${KEYSPACE}); do
    tar cjfv ${TABLE}.tbz -C /var/lib/cassandra/data/${KEYSPACE}/${TABLE}/snapshots/${SNAPSHOT_DATE} .
done
cd ..
done

nodetool -h localhost -p 7199 clearsnapshot -t ${SNAPSHOT_DATE}

# Copy the snapshot archive files to a remote server

scp /var/lib/cassandra/archive_backup/$HOSTNAME/${SNAPSHOT_DATE}/* ${REMOTE_USER}@${REMOTE_HOST}:/remote/node-hostname_cassandra_backup_directory
"""


def guide_script(node: CassandraNode, archive_root: Path, date: str) -> str:
    """The guide's script for one node, edited as the module docstring says (each edit must
    apply exactly once, so a change of the guide's text fails loudly)."""
    q = shlex.quote
    edits = [
        ("HOSTNAME=$(hostname)", f"HOSTNAME={q(node.name)}"),
        ('SNAPSHOT_DATE="$(date +%F)"', f"SNAPSHOT_DATE={q(date)}"),
        ("REMOTE_USER=<remote_user_to_change>", "REMOTE_USER=backup"),
        ("REMOTE_HOST=<remote_host_to_change>", "REMOTE_HOST=localhost"),
        ("nodetool -h localhost -p 7199 clearsnapshot", f"{q(str(node.nodetool))} clearsnapshot"),
        ("nodetool snapshot", f"{q(str(node.nodetool))} snapshot"),
        ("scp /var/lib/cassandra/archive_backup/$HOSTNAME/${SNAPSHOT_DATE}/* "
         "${REMOTE_USER}@${REMOTE_HOST}:/remote/node-hostname_cassandra_backup_directory\n", ""),
    ]
    text = GUIDE_BACKUP_SCRIPT
    for old, new in edits:
        assert text.count(old) == 1, f"the guide's script changed: {old!r}"
        text = text.replace(old, new)
    for old, new in (("/var/lib/cassandra/archive_backup", str(archive_root)),
                     ("/var/lib/cassandra/data", str(node.data_dir))):
        assert old in text, f"the guide's script changed: {old!r}"
        text = text.replace(old, q(new))
    return text


def run_guide_backup(cluster: CassandraCluster, archive_root: Path, date: str,
                     nodes: list[CassandraNode] | None = None) -> dict[str, str]:
    """Run the guide's script on ``nodes`` (default: every node) at once, as the guide asks;
    returns each node's output. ``archive_root/<node name>/<date>/`` holds what it made."""
    archive_root.mkdir(parents=True, exist_ok=True)

    def run(node: CassandraNode) -> str:
        r = subprocess.run(["bash", "-c", guide_script(node, archive_root, date)], check=False,
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"the guide's backup script failed on {node.name} "
                               f"(rc={r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
        return r.stdout + r.stderr

    chosen = nodes or cluster.nodes
    with ThreadPoolExecutor(len(chosen)) as pool:
        return dict(zip((n.name for n in chosen), pool.map(run, chosen), strict=True))
