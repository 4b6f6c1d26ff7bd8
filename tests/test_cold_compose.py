"""Cold backup of TheHive's Docker Compose profile (issue 10): the compose folder with ``.env``,
configuration and certificates is in the backup and, after the folder is lost, comes back
byte-identical; the services are driven with exactly ``docker compose -f <file> stop|up -d|ps ...
<service>`` (and ``docker ps`` by the Compose labels while the compose file is gone).

``docker`` is a stand-in (tests/stack/compose.py) that records its argv and really stops and
starts the TheHive stand-in it stands for. Only TheHive is managed through it: the Cassandra
cluster of the session is not stopped (its cold backup is tests/test_cold.py's).
"""
from __future__ import annotations

import json
import shutil
import time
import uuid

import pytest

from config import load_stack
from flows import lifecycle
from flows.cold_backup import cold_backup
from flows.cold_restore import cold_restore
from tasks.manifest import read_manifest
from tasks.repositories import open_repository
from tests.stack import seed
from tests.stack.compose import install_docker, make_compose_folder, recorded
from tests.stack.thehive_standin import get_status, wait_healthy
from tests.stack.treehash import tree

pytestmark = pytest.mark.usefixtures("prefect_server", "seeded3")


def test_cold_backup_and_restore_of_the_docker_compose_profile(real_stack, cluster3, standin3,
                                                               tmp_path, capsys):
    t0 = time.monotonic()
    compose_file = make_compose_folder(tmp_path / "thehive-compose")
    folder = str(compose_file.parent)
    record = tmp_path / "docker-argv.jsonl"
    docker = install_docker(real_stack.sshd.path_dir, record,
                            {"thehive": real_stack.root / "thehive" / "bin"})
    data = real_stack.stack_data(cluster3, real_stack.repository("local", f"r{uuid.uuid4().hex[:10]}"),
                                 with_elasticsearch=False)
    data["services"] = [s for s in data["services"] if s["name"] == "thehive"]
    data["services"][0]["manager"] = {"kind": "docker-compose", "compose_file": str(compose_file),
                                      "service": "thehive"}
    path = real_stack.write_stack_file(tmp_path / "stack.yaml", data)
    st = load_stack(path)
    before = tree(folder)
    files = seed.files_fingerprint(real_stack.files_dir)
    backup_id = ""
    try:
        result = cold_backup(stack=str(path), label="compose profile")
        assert result["restart"] == "ok"
        assert any(f"{folder} on hive (thehive/compose-project)" in n for n in result["notes"])
        base = ["docker", "compose", "-f", str(compose_file)]
        ps = [*base, "ps", "--status", "running", "--quiet", "thehive"]
        calls = recorded(record)
        assert [c for c in calls if c != ps] == [[*base, "stop", "thehive"], [*base, "up", "-d", "thehive"]]
        backup_id = result["backup_id"]
        with open_repository(st) as repo:
            manifest = read_manifest(repo, backup_id)
            archive = next(o for o in manifest.objects if o.name == "compose-project" and o.role == "archive")
            assert archive.node == "hive" and archive.path == folder
            assert archive.inventory_key is not None
            inventory = json.loads(repo.get_bytes(archive.inventory_key))
        saved = {e["path"] for e in inventory["files"]}
        assert {".env", "docker-compose.yml", "certificates/thehive.key", "certificates/ca.pem",
                "thehive/config/application.conf", "certificates/current.pem"} <= saved

        # The profile lost: the whole compose folder (secrets, configuration, certificates) gone.
        lifecycle.stop_in_order(st, [], plain=True)
        shutil.rmtree(folder)
        n_before_restore = len(recorded(record))
        restored = cold_restore(stack=str(path), backup_id=backup_id, wipe=True)
        assert restored["restart"] == "ok"
        assert tree(folder) == before  # every file, link, owner and mode: byte-identical
        assert seed.files_fingerprint(real_stack.files_dir) == files
        assert f"hive:{folder}" not in restored["moved_aside"]
        calls = recorded(record)[n_before_restore:]
        # No compose file to ask: whether TheHive runs is asked by the labels Compose sets.
        labels = ["docker", "ps", "--quiet", "--filter", f"label=com.docker.compose.project.working_dir={folder}",
                  "--filter", "label=com.docker.compose.service=thehive"]
        assert calls[:2] == [ps, labels]  # the compose file is asked first, and is missing
        assert [c for c in calls if c not in (ps, labels)] == [[*base, "up", "-d", "thehive"]]
        assert get_status(real_stack.standin_url)[0] == 200
        with capsys.disabled():
            print(f"\n[cold backup, compose profile] {time.monotonic() - t0:.1f} s "
                  f"(downtime {result['downtime']:.1f} s)")
    finally:
        docker.unlink()
        if backup_id:  # what wipe=True moved aside
            for moved in (folder, real_stack.files_dir):
                shutil.rmtree(f"{moved}.before-{backup_id}", ignore_errors=True)
        if not standin3.running():
            standin3.start()
            wait_healthy(real_stack.standin_url, service=standin3)
