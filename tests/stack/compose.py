"""TheHive's Docker Compose profile on the test stack, without Docker.

``make_compose_folder`` writes a compose project folder as the guide's profile has it
(``docker-compose.yml``, ``.env`` with secrets, configuration, certificates). ``install_docker``
puts a stand-in ``docker`` first on the PATH of every SSH session (tests/stack/sshd.py): a real
script that appends its exact argv to a record file (one JSON list a line) and, for the compose
services it stands for, really runs their start/stop/status scripts. Like ``docker compose``, it
fails when the ``-f`` file does not exist; ``docker ps --quiet --filter label=...service=S``
answers from S's status script.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

_DOCKER = '''#!{python}
"""Stand-in docker (tests/stack/compose.py): NOT Docker."""
import json, os, subprocess, sys

argv = sys.argv[1:]
with open({record!r}, "a") as f:
    f.write(json.dumps(["docker", *argv]) + "\\n")
services = {services!r}
label = "label=com.docker.compose.service="
if argv[:2] == ["ps", "--quiet"] and argv[-1].startswith(label):  # by Compose labels, no file
    if subprocess.run([services[argv[-1][len(label):]] + "/status"], stdout=subprocess.DEVNULL).returncode == 0:
        print("c0ffee")
    sys.exit(0)
if argv[:2] != ["compose", "-f"] or len(argv) < 4:
    sys.exit("stand-in docker: only 'docker compose -f FILE ...' is known")
compose_file, rest = argv[2], argv[3:]
if rest[:1] == ["--project-directory"]:
    rest = rest[2:]
if not os.path.isfile(compose_file):
    sys.exit(f"open {{compose_file}}: no such file or directory")
verb, svc = rest[0], rest[-1]
if svc not in services:
    sys.exit(f"no such service: {{svc}}")
bin_dir = services[svc]
if verb == "stop" and len(rest) == 2:
    sys.exit(subprocess.run([bin_dir + "/stop"]).returncode)
if rest[:2] == ["up", "-d"] and len(rest) == 3:
    sys.exit(subprocess.run([bin_dir + "/start"]).returncode)
if rest[:4] == ["ps", "--status", "running", "--quiet"] and len(rest) == 5:
    if subprocess.run([bin_dir + "/status"], stdout=subprocess.DEVNULL).returncode == 0:
        print("c0ffee" + svc)
    sys.exit(0)
sys.exit(f"stand-in docker: unknown command {{argv}}")
'''

COMPOSE_YML = """services:
  thehive:
    image: strangebee/thehive:5.4
    env_file: .env
    volumes:
      - ./thehive/config/application.conf:/etc/thehive/application.conf:ro
      - ./thehive/data/files:/opt/thp/thehive/files
      - ./certificates:/opt/thp/thehive/certificates:ro
    ports: ["0.0.0.0:9000:9000"]
"""


def make_compose_folder(folder: Path) -> Path:
    """A compose project folder with everything a cold backup must keep; the compose file's path."""
    files = {
        "docker-compose.yml": (COMPOSE_YML, 0o644),
        ".env": ("COMPOSE_PROJECT_NAME=thehive\nCASSANDRA_PASSWORD=s3cr3t 'with' quotes\n"
                 "ELASTIC_PASSWORD=another-secret\nTHEHIVE_SECRET=" + "k" * 64 + "\n", 0o600),
        "thehive/config/application.conf": ('play.http.secret.key = ${?THEHIVE_SECRET}\n'
                                            'db.janusgraph.storage.hostname = ["cassandra"]\n', 0o640),
        "thehive/config/logback.xml": ("<configuration/>\n", 0o644),
        "certificates/ca.pem": ("-----BEGIN CERTIFICATE-----\nMIIB" + "A" * 200 + "\n"
                                "-----END CERTIFICATE-----\n", 0o644),
        "certificates/thehive.key": ("-----BEGIN PRIVATE KEY-----\n" + "B" * 120 + "\n"
                                     "-----END PRIVATE KEY-----\n", 0o600),
        "nginx/conf.d/thehive.conf": ("server { listen 443 ssl; }\n", 0o644),
    }
    for rel, (text, mode) in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    (folder / "thehive" / "data" / "files").mkdir(parents=True)  # an empty bind-mount folder
    os.symlink("ca.pem", folder / "certificates" / "current.pem")
    return folder / "docker-compose.yml"


def install_docker(path_dir: Path, record: Path, services: dict[str, Path]) -> Path:
    """Write the stand-in ``docker`` into ``path_dir``; ``services``: compose service -> the folder
    of its start/stop/status scripts."""
    docker = path_dir / "docker"
    docker.write_text(_DOCKER.format(python=sys.executable, record=str(record),
                                     services={k: str(v) for k, v in services.items()}))
    docker.chmod(0o755)
    return docker


def recorded(record: Path) -> list[list[str]]:
    """Every argv the stand-in was called with, in order."""
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]
