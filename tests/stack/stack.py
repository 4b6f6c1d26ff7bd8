"""The whole real stack under one folder: each service started on first use, once.

Used by the pytest session fixtures (``tests/conftest.py``, addresses 127.0.0.x) and by the sandbox
(``python -m tests.stack.sandbox``, addresses 127.0.1.x), so tests and the demo run the same thing.
``stack_file()`` writes a stack YAML describing it, exactly as an operator would for a real install:
every node is reached through the real sshd, services are driven by their start/stop scripts.
"""
from __future__ import annotations

import os
import secrets
import shutil
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from tests.stack import seed
from tests.stack.cassandra import VERSION_41, VERSION_50, CassandraCluster, make_cluster
from tests.stack.elasticsearch import ElasticsearchServer, make_elasticsearch
from tests.stack.proc import Service, port_open
from tests.stack.s3 import S3Server, make_s3
from tests.stack.sshd import SshServer, make_sshd
from tests.stack.thehive_standin import make_standin, wait_healthy, write_application_conf

KEYSPACE = "thehive"
#: What the session seeds on the 3-node cluster (``seeded3``), and seeds again when a test changed it.
SEED3 = {"size_mb": 3, "files": 12, "file_kb": 48}
SSH_PORT = 2222


def _replication(cluster: CassandraCluster) -> dict:
    """The seeded keyspace's replication: RF 3, or every node of a smaller cluster."""
    return {"class": "NetworkTopologyStrategy", "dc1": min(3, len(cluster.nodes))}


def streaming_backup(repo_root: Path) -> str | None:
    """The id of the hot backup writing a table's archive or an SSTable component into the local
    repository ``repo_root`` right now (a temporary object there), or None: "mid-stream"."""
    temps = [*repo_root.glob("hot-*/cassandra/**/.tmp-*"), *repo_root.glob("sstables/**/.tmp-*")]
    running = sorted(p.parent.name for p in repo_root.glob("hot-*/started.json")
                     if not (p.parent / "manifest.json").exists())
    return running[-1] if temps and running else None


@dataclass(frozen=True)
class Layout:
    """Where each service listens (docs/HARNESS.md): one /24 of loopback per stack."""

    net: str = "127.0.0"
    jmx_offset: int = 0
    password_env: str = "THB_TEST_CASSANDRA_PASSWORD"
    s3_key_env: str = "THB_TEST_S3_KEY"
    s3_secret_env: str = "THB_TEST_S3_SECRET"

    def addr(self, host: int) -> str:
        return f"{self.net}.{host}"

    @property
    def ssh_addresses(self) -> list[str]:
        return [self.addr(h) for h in (1, 2, 3, 11, 21, 31, 41, 51, 61)]


class RealStack:
    """Lazily started services; ``stop()`` stops what was started."""

    def __init__(self, root: Path, layout: Layout = Layout(), password: str | None = None):
        self.root, self.layout, self.password = root, layout, password
        self.root.mkdir(parents=True, exist_ok=True)
        self._started: list = []
        self._lock = threading.RLock()

    def _start(self, thing, *endpoints: tuple[str, int]):
        """Start ``thing`` once its ports are known free: a leftover process of an earlier run
        answering there would otherwise pass for ours (with other host keys, other data)."""
        own = getattr(thing, "service", thing)
        ours_running = isinstance(own, Service) and own.running()  # the sandbox, started before
        taken = [] if ours_running else [f"{a}:{p}" for a, p in endpoints if port_open(a, p)]
        if taken:
            raise RuntimeError(f"cannot start {thing!r}: {', '.join(taken)} already taken by another "
                               "process (a leftover of an earlier run?)")
        self._started.append(thing)  # stopped at the end even if its start fails half-way
        thing.start()
        return thing

    def stop(self) -> None:
        for thing in reversed(self._started):
            try:
                thing.stop()
            except Exception as exc:  # keep stopping the rest
                print(f"stopping {thing!r}: {exc}")
        self._started.clear()

    # -- services ------------------------------------------------------------------------------
    @cached_property
    def sshd(self) -> SshServer:
        return self._start(make_sshd(self.root / "sshd", addresses=self.layout.ssh_addresses,
                                     port=SSH_PORT),
                           *[(a, SSH_PORT) for a in self.layout.ssh_addresses])

    def _cluster(self, name: str, hosts: list[int], jmx: list[int], version: str) -> CassandraCluster:
        password = self.password or secrets.token_urlsafe(16)
        cluster = make_cluster(self.root / "cassandra", version=version, cluster_name=name,
                               addresses=[self.layout.addr(h) for h in hosts],
                               jmx_ports=[p + self.layout.jmx_offset for p in jmx],
                               auth=True, password=password)
        return self._start(cluster)

    @cached_property
    def cassandra3(self) -> CassandraCluster:
        """Cassandra 4.1, three nodes, PasswordAuthenticator (the primary target)."""
        return self._cluster("c41x3", [1, 2, 3], [7199, 7299, 7399], VERSION_41)

    @cached_property
    def cassandra1(self) -> CassandraCluster:
        """Cassandra 4.1, one node: restores into another topology."""
        return self._cluster("c41x1", [11], [7499], VERSION_41)

    @cached_property
    def cassandra5(self) -> CassandraCluster:
        """Cassandra 5.0, one node."""
        return self._cluster("c50x1", [21], [7599], VERSION_50)

    @cached_property
    def cassandra1_unstarted(self) -> CassandraCluster:
        """The single-node cluster's files (net.11), never started: the stack file of a test that
        backs up and restores Elasticsearch alone names a cluster but reaches none, and so does
        not pay for a Cassandra start."""
        return make_cluster(self.root / "cassandra-unstarted", version=VERSION_41, cluster_name="c41x1",
                            addresses=[self.layout.addr(11)], jmx_ports=[7499 + self.layout.jmx_offset],
                            auth=True, password=self.password or secrets.token_urlsafe(16))

    @cached_property
    def elasticsearch(self) -> ElasticsearchServer:
        return self._start(make_elasticsearch(self.root / "elasticsearch",
                                              address=self.layout.addr(31)),
                           (self.layout.addr(31), 9200))

    @cached_property
    def s3(self) -> S3Server:
        server = self._start(make_s3(self.root / "s3", address=self.layout.addr(41)),
                             (self.layout.addr(41), 9000))
        os.environ[self.layout.s3_key_env] = server.access_key
        os.environ[self.layout.s3_secret_env] = server.secret_key
        return server

    @property
    def files_dir(self) -> Path:
        path = self.root / "thehive" / "files"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def standin(self, cluster: CassandraCluster) -> Service:
        """The TheHive stand-in (not TheHive) on ``cluster`` and our Elasticsearch."""
        home = self.root / "thehive"
        conf = write_application_conf(
            home / "application.conf", cassandra_hosts=cluster.addresses, keyspace=KEYSPACE,
            username=cluster.username, password=cluster.password,
            es_hosts=[self.elasticsearch.address], es_port=self.elasticsearch.port,
            files_dir=self.files_dir)
        return make_standin(home, address=self.layout.addr(61), conf=conf)

    @property
    def standin_url(self) -> str:
        return f"http://{self.layout.addr(61)}:9000"

    def start_standin(self, cluster: CassandraCluster) -> Service:
        service = self._start(self.standin(cluster), (self.layout.addr(61), 9000))
        wait_healthy(self.standin_url, timeout=120, service=service)
        return service

    # -- data ----------------------------------------------------------------------------------
    def seed(self, cluster: CassandraCluster, *, size_mb: float, files: int = 20,
             file_kb: int = 64, seed_value: int = 0, index: bool = True) -> dict:
        """TheHive-like data in every component; returns what was written."""
        session = cluster.session()
        try:
            seed.create_keyspace(session, KEYSPACE, _replication(cluster))
            rows = seed.seed_cassandra(session, KEYSPACE, size_mb=size_mb, seed=seed_value)
            docs = seed.build_index(self.elasticsearch.client(), session, KEYSPACE) if index else 0
        finally:
            session.cluster.shutdown()
        attachments = seed.seed_files(self.files_dir, count=files, size_kb=file_kb, seed=seed_value)
        return {"rows": rows, "docs": docs, "files": attachments}

    def seeded_state(self, cluster: CassandraCluster) -> dict:
        """Fingerprints of the seeded keyspace, index and attachments (what ``put_back_seed`` restores)."""
        return {"rows": seed.cluster_fingerprint(cluster, KEYSPACE),
                "index": seed.index_fingerprint(self.elasticsearch.client()),
                "files": seed.files_fingerprint(self.files_dir)}

    def put_back_seed(self, cluster: CassandraCluster, state: dict, *, size_mb: float, files: int,
                      file_kb: int, seed_value: int = 0) -> list[str]:
        """Bring the seeded data back where an earlier test of the session changed it (a restore's
        drop and its ``dropped-*`` snapshots, a later write, another index, a deleted attachment), so
        that no test's outcome depends on which tests ran before it. Returns what was redone."""
        redone = []
        es = self.elasticsearch.client()
        rows_changed = seed.cluster_fingerprint(cluster, KEYSPACE) != state["rows"]
        if rows_changed or seed.index_fingerprint(es) != state["index"]:
            session = cluster.session()
            try:
                if rows_changed:
                    session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")
                    self.clear_snapshots()  # the drop's "dropped-*" ones
                    seed.create_keyspace(session, KEYSPACE, _replication(cluster))
                    seed.seed_cassandra(session, KEYSPACE, size_mb=size_mb, seed=seed_value)
                    redone.append("keyspace")
                es.indices.delete(index=seed.INDEX_PATTERN, ignore_unavailable=True, allow_no_indices=True,
                                  expand_wildcards="all")
                seed.build_index(es, session, KEYSPACE)
                redone.append("index")
            finally:
                session.cluster.shutdown()
        if seed.files_fingerprint(self.files_dir) != state["files"]:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            for child in self.files_dir.iterdir():  # the folder itself stays, with its mode (a
                if child.is_dir() and not child.is_symlink():  # module may have shut it to others)
                    shutil.rmtree(child)
                else:
                    child.unlink()
            seed.seed_files(self.files_dir, count=files, size_kb=file_kb, seed=seed_value)
            redone.append("files")
        return redone

    def clear_snapshots(self) -> list[str]:
        """``nodetool clearsnapshot --all`` on each running node, of the clusters started so far, that
        holds a snapshot: a restore's drop leaves ``dropped-*`` ones (auto_snapshot), a failed test
        its own, and the next test must not find them. Returns the nodes cleared."""
        cleared = []
        started = [self.__dict__[n] for n in ("cassandra3", "cassandra1", "cassandra5") if n in self.__dict__]
        for cluster in started:
            for node in cluster.nodes:
                if any(node.data_dir.glob("*/*/snapshots/*")) and port_open(node.address, 9042):
                    cluster.nodetool(node, "clearsnapshot", "--all")
                    cleared.append(node.name)
        return cleared

    # -- the stack file ------------------------------------------------------------------------
    def stack_data(self, cluster: CassandraCluster, repository: dict, *, name: str = "sandbox",
                   with_elasticsearch: bool = True, with_thehive: bool = True,
                   attachments: dict | None = None, work_queues: dict[str, str] | None = None,
                   storage: str | None = None) -> dict:
        """The stack description of this harness, as an operator would write it (``work_queues``:
        node -> the Prefect work queue of its datacenter's worker; ``storage``: the hot backups'
        ``cassandra.storage``, else the default)."""
        lay = self.layout
        os.environ[lay.password_env] = cluster.password or ""
        nodes = [{"name": n.name, "address": n.address, "roles": ["cassandra"]} for n in cluster.nodes]
        nodes.append({"name": "hive", "address": lay.addr(61),
                      "roles": ["thehive", "files"] + (["elasticsearch"] if with_elasticsearch else [])})
        data: dict = {
            "name": name,
            "ssh": {"user": "root", "port": SSH_PORT, "key_file": str(self.sshd.client_key),
                    "known_hosts": str(self.sshd.known_hosts)},
            "nodes": nodes,
            "services": [
                {"name": "cassandra", "nodes": [n.name for n in cluster.nodes],
                 "manager": {"kind": "command",
                             "start": [str(self.root / "cassandra" / "{node}" / "bin" / "start")],
                             "stop": [str(self.root / "cassandra" / "{node}" / "bin" / "stop")],
                             "status": [str(self.root / "cassandra" / "{node}" / "bin" / "status")]}},
                {"name": "thehive", "nodes": ["hive"],
                 "manager": {"kind": "command",
                             "start": [str(self.root / "thehive" / "bin" / "start")],
                             "stop": [str(self.root / "thehive" / "bin" / "stop")],
                             "status": [str(self.root / "thehive" / "bin" / "status")]},
                 "health_url": f"{self.standin_url}/api/status",
                 "config_file": str(self.root / "thehive" / "application.conf")},
            ],
            "cassandra": {
                "keyspaces": [KEYSPACE],
                "username": cluster.username,
                "password": {"env": lay.password_env},
                "replication": {"class": "NetworkTopologyStrategy", "dc1": min(3, len(cluster.nodes))},
                "nodes": {n.name: {"nodetool": [str(n.nodetool)],
                                   "sstableloader": [str(n.sstableloader)],
                                   "data_dirs": [str(n.data_dir)],
                                   "commitlog_dir": str(n.commitlog_dir),
                                   "hints_dir": str(n.hints_dir),
                                   "saved_caches_dir": str(n.saved_caches_dir),
                                   "log_file": str(n.service.log),
                                   "staging_dir": str(n.home / "staging"),
                                   **({"work_queue": queue} if (queue := (work_queues or {}).get(n.name))
                                      else {})}
                          for n in cluster.nodes},
            },
            "attachments": attachments or {"kind": "folder", "node": "hive",
                                           "path": str(self.files_dir)},
            "repository": repository,
        }
        if storage is not None:
            data["cassandra"]["storage"] = storage
        if not with_thehive:
            data["services"] = [s for s in data["services"] if s["name"] != "thehive"]
        if with_elasticsearch:
            es = self.elasticsearch
            data["elasticsearch"] = {
                "url": es.url, "index_patterns": ["thehive_global*"],
                "snapshot_repository": {"name": "thehive-backup", "type": "fs",
                                        "settings": {"location": str(es.repo_dir)}}}
            data["services"].insert(1, {
                "name": "elasticsearch", "nodes": ["hive"],
                "manager": {"kind": "command", "start": [str(es.service.start_script)],
                            "stop": [str(es.service.stop_script)],
                            "status": [str(es.service.status_script)]}})
        return data

    def repository(self, kind: str, name: str) -> dict:
        """Settings of a fresh, empty repository of each kind."""
        if kind == "local":
            return {"kind": "local", "path": str(self.root / "repos" / name)}
        if kind == "sftp":
            return {"kind": "sftp", "host": self.layout.addr(51),
                    "path": str(self.root / "sftp" / name),
                    "ssh": {"user": "root", "port": SSH_PORT, "key_file": str(self.sshd.client_key),
                            "known_hosts": str(self.sshd.known_hosts)}}
        if kind == "s3":
            self.s3.client().create_bucket(Bucket=name)
            return {"kind": "s3", "bucket": name, "endpoint_url": self.s3.endpoint_url,
                    "access_key_id": {"env": self.layout.s3_key_env},
                    "secret_access_key": {"env": self.layout.s3_secret_env}}
        raise ValueError(kind)

    def write_stack_file(self, path: Path, data: dict) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path
