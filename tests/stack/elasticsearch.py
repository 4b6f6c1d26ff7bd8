"""A real single-node Elasticsearch for the test stack.

The server is Maven Central's ``integ-test-zip`` distribution (a real, minimal Elasticsearch without a
bundled JDK) run on the machine's Java 17. Elasticsearch refuses to run as root, so it runs as the
system user ``elasticsearch``; every path it touches therefore has to be reachable by that user,
which is why each instance gets a hard-linked copy of the cached distribution under its own root.
"""
from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from elasticsearch import Elasticsearch

from tests.stack.proc import QUICK_JIT, Service, cache_dir, port_open, wait_until, write_service

VERSION = "8.19.7"
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
USER = "elasticsearch"
ARTIFACT = "org.elasticsearch.distribution.integ-test-zip:elasticsearch:{version}:zip"


@dataclass(frozen=True)
class ElasticsearchServer:
    """One Elasticsearch node; ``repo_dir`` is its ``path.repo`` for ``fs`` snapshot repositories."""

    version: str
    address: str
    port: int
    url: str
    home: Path
    repo_dir: Path
    service: Service

    def start(self, timeout: float = 180) -> None:
        """Start and wait until the cluster is at least yellow, i.e. usable by clients."""
        self.service.start()
        wait_until(self._healthy, f"elasticsearch health at {self.url}", timeout, self.service)

    def stop(self) -> None:
        self.service.stop()

    def start_empty(self, timeout: float = 180) -> None:
        """A disaster on the same address: stop, delete everything in the data folder and in the
        snapshot folder (``path.repo``), start again — a new cluster, no index, no repository."""
        self.stop()
        for folder in (self.repo_dir.parent / "data", self.repo_dir):
            for child in folder.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        self.start(timeout)

    def client(self) -> Elasticsearch:
        """An ``elasticsearch`` 8.x client (a 9.x client is refused by an 8.x server)."""
        return Elasticsearch(self.url, request_timeout=60)

    def _healthy(self) -> bool:
        if not port_open(self.address, self.port):
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/_cluster/health", timeout=5) as resp:
                return json.load(resp).get("status") in ("yellow", "green")
        except (OSError, ValueError):  # URLError is an OSError
            return False


def distribution(version: str = VERSION) -> Path:
    """The unpacked distribution in the cache; unpacked to a temp dir first so a partial one is never used."""
    home = cache_dir() / f"elasticsearch-{version}"
    if home.is_dir():
        return home
    tmp = Path(tempfile.mkdtemp(prefix=f".elasticsearch-{version}-", dir=cache_dir()))
    try:
        artifact = ARTIFACT.format(version=version)
        mvn = subprocess.run(
            ["mvn", "-B", "-q", "dependency:unpack", f"-Dartifact={artifact}", f"-DoutputDirectory={tmp}"],
            cwd=tmp, timeout=1800, capture_output=True, text=True,
        )
        if mvn.returncode != 0:
            raise RuntimeError(f"mvn could not unpack {artifact}:\n{mvn.stdout}{mvn.stderr}")
        try:
            (tmp / f"elasticsearch-{version}").rename(home)
        except OSError:
            if not home.is_dir():  # another process may have won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return home


def ensure_user() -> None:
    """Create the system user Elasticsearch runs as (it refuses root)."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=False, timeout=60)
        pwd.getpwnam(USER)  # raises if useradd failed for another reason than a concurrent create


def _open_to_user(root: Path) -> None:
    """Let the service user traverse down to ``root``: temp dirs (pytest's basetemp too) are 0700."""
    root.chmod(0o755)
    tmp = Path(tempfile.gettempdir()).resolve()
    for parent in root.resolve().parents:
        if parent == tmp or tmp not in parent.parents:
            break
        parent.chmod(parent.stat().st_mode | 0o001)
    probe = subprocess.run(["runuser", "-u", USER, "--", "test", "-x", str(root)], timeout=30)
    if probe.returncode != 0:
        raise PermissionError(f"user {USER!r} cannot reach {root}: give its parent directories o+x")


def _link_home(dist: Path, home: Path) -> None:
    """Hard-link the cached distribution (the cache may sit under 0700 /root); copy across filesystems."""
    if home.is_dir():
        return
    if subprocess.run(["cp", "-al", str(dist), str(home)], capture_output=True, timeout=300).returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(dist, home, symlinks=True)


def _settings(root: Path, home: Path, address: str, port: int) -> dict[str, object]:
    settings: dict[str, object] = {
        "cluster.name": "thehive-backup-test",
        "node.name": f"es-{address}",
        "discovery.type": "single-node",
        "network.host": address,
        "http.port": port,
        "transport.port": 9300,
        "path.data": str(root / "data"),
        "path.logs": str(root / "logs"),
        "path.repo": [str(root / "snapshots")],
        "cluster.routing.allocation.disk.threshold_enabled": False,
        "action.destructive_requires_name": False,
    }
    # Both settings are registered by their module only: an unknown setting aborts the start.
    if (home / "modules" / "x-pack-security").is_dir():
        settings["xpack.security.enabled"] = False
    if (home / "modules" / "ingest-geoip").is_dir():
        settings["ingest.geoip.downloader.enabled"] = False
    return settings


def make_elasticsearch(root: Path, *, address: str, port: int = 9200,
                       version: str = VERSION) -> ElasticsearchServer:
    """Prepare (not start) a node under ``root``: own config copy, data, logs and snapshot dirs."""
    dist = distribution(version)
    ensure_user()
    root.mkdir(parents=True, exist_ok=True)
    _open_to_user(root)
    home = root / "home"
    _link_home(dist, home)
    conf = root / "config"
    shutil.copytree(dist / "config", conf, dirs_exist_ok=True)
    settings = _settings(root, home, address, port)
    # JSON is valid YAML: no quoting pitfalls for paths and addresses.
    (conf / "elasticsearch.yml").write_text(
        "".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    service = write_service(
        root, "elasticsearch", [str(home / "bin" / "elasticsearch")],
        env={"ES_JAVA_HOME": JAVA_HOME, "ES_JAVA_OPTS": " ".join(["-Xms512m", "-Xmx512m", *QUICK_JIT]),
             "ES_PATH_CONF": str(conf),
             "ES_TMPDIR": str(root / "tmp")},
        run_as=USER, cwd=root / "logs",
    )
    for name in ("data", "logs", "snapshots", "tmp"):
        (root / name).mkdir(exist_ok=True)
    (root / "snapshots").chmod(0o775)
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(conf), *(str(root / n) for n in
                    ("data", "logs", "snapshots", "tmp"))], check=True, timeout=300)
    return ElasticsearchServer(version, address, port, f"http://{address}:{port}", home,
                               root / "snapshots", service)
