"""TheHive stand-in — this is NOT TheHive.

TheHive 5 is not available from any registry this project can reach, so the test stack runs this small
HTTP service in its place. It behaves like TheHive only in what backup and restore care about:

- it reads TheHive's ``application.conf`` (HOCON): the Cassandra hosts, port, credentials and keyspace
  of ``db.janusgraph.storage``, the Elasticsearch hosts of ``db.janusgraph.index.search``, the
  attachments folder ``storage.localfs.location`` and ``db.janusgraph.forceDropAndRebuildIndex``;
- ``GET /api/status`` answers 200 only while the keyspace's ``system_properties`` table can be read and
  Elasticsearch is not red and has a ``thehive_global*`` index, 503 with the reason otherwise — so a flow
  can wait for "TheHive is healthy" after a restore and fail when a component is missing;
- with ``forceDropAndRebuildIndex = true`` it drops ``thehive_global*`` at start and rebuilds
  ``thehive_global`` from the keyspace (``tests.stack.seed.build_index``), so the restore path that
  relies on an index rebuild is exercised for real.

Run: ``python -m tests.stack.thehive_standin --config application.conf --listen 127.0.0.61:9000``.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.stack import proc, seed

log = logging.getLogger("thehive-standin")
REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE_TIMEOUT = 2  # seconds; a status request must answer quickly even when a backend hangs


@dataclass(frozen=True)
class Config:
    """What the stand-in takes from ``application.conf``."""

    cassandra_hosts: list[str]
    cassandra_port: int
    username: str | None
    password: str | None
    keyspace: str
    es_hosts: list[str]
    es_port: int
    files_dir: Path | None
    force_rebuild_index: bool


def _hosts(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(h) for h in value]


def load_config(path: Path) -> Config:
    from pyhocon import ConfigFactory

    conf = ConfigFactory.parse_file(str(path))
    storage = conf.get_config("db.janusgraph.storage")
    search = conf.get_config("db.janusgraph.index.search")
    location = conf.get_string("storage.localfs.location", None)
    return Config(
        cassandra_hosts=_hosts(storage.get("hostname")),
        cassandra_port=storage.get_int("port", 9042),
        username=storage.get_string("username", None),
        password=storage.get_string("password", None),
        keyspace=storage.get_string("cql.keyspace"),
        es_hosts=_hosts(search.get("hostname")),
        es_port=search.get_int("port", 9200),
        files_dir=Path(location) if location else None,
        force_rebuild_index=conf.get_bool("db.janusgraph.forceDropAndRebuildIndex", False),
    )


class Backends:
    """Cassandra and Elasticsearch clients that are rebuilt after any failure.

    Backup and restore stop, replace and restart the backends under the stand-in; a fresh driver after
    a failure is simpler and more reliable than trusting a long-lived one to notice.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._cluster: Any = None
        self._session: Any = None
        self._es: Any = None

    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                from cassandra.auth import PlainTextAuthProvider
                from cassandra.cluster import Cluster
                from cassandra.policies import ConstantReconnectionPolicy

                c = self.config
                auth = PlainTextAuthProvider(c.username, c.password or "") if c.username else None
                cluster = Cluster(c.cassandra_hosts, port=c.cassandra_port, auth_provider=auth,
                                  connect_timeout=PROBE_TIMEOUT, control_connection_timeout=PROBE_TIMEOUT,
                                  reconnection_policy=ConstantReconnectionPolicy(1.0))
                try:
                    self._session = cluster.connect()
                except Exception:
                    cluster.shutdown()
                    raise
                self._cluster = cluster
            return self._session

    def es(self) -> Any:
        with self._lock:
            if self._es is None:
                from elasticsearch import Elasticsearch

                self._es = Elasticsearch([f"http://{h}:{self.config.es_port}" for h in self.config.es_hosts],
                                         request_timeout=PROBE_TIMEOUT, max_retries=0)
            return self._es

    def reset(self) -> None:
        with self._lock:
            cluster, es = self._cluster, self._es
            self._cluster = self._session = self._es = None
        if cluster is not None:
            cluster.shutdown()
        if es is not None:
            es.close()


class StandIn:
    """State behind ``/api/status``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.backends = Backends(config)
        self.rebuilt_index = False
        self.rebuild_pending = config.force_rebuild_index

    def rebuild_index_until_done(self) -> None:
        """Drop ``thehive_global*`` and rebuild from the keyspace, retrying until both backends answer."""
        while True:
            try:
                session = self.backends.session()
                # The rebuild reads the whole keyspace: its own client, without the probes' short timeout.
                from elasticsearch import Elasticsearch

                es = Elasticsearch([f"http://{h}:{self.config.es_port}" for h in self.config.es_hosts],
                                   request_timeout=300)
                try:
                    dropped = sorted(es.indices.get(index=seed.INDEX_PATTERN, allow_no_indices=True))
                    if dropped:
                        es.indices.delete(index=",".join(dropped))
                    count = seed.build_index(es, session, self.config.keyspace)
                finally:
                    es.close()
            except Exception as exc:  # noqa: BLE001 - any backend failure: retry, as TheHive would
                log.warning("index rebuild not possible yet: %s", exc)
                self.backends.reset()
                time.sleep(2)
                continue
            log.info("forceDropAndRebuildIndex: dropped %s, rebuilt %s with %d documents from keyspace %s",
                     dropped or "no index", seed.INDEX, count, self.config.keyspace)
            self.rebuilt_index, self.rebuild_pending = True, False
            return

    def status(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"keyspace": self.config.keyspace, "index": None,
                                "rebuilt_index": self.rebuilt_index}
        if self.config.files_dir is not None:
            body["files"] = {"location": str(self.config.files_dir), "present": self.config.files_dir.is_dir()}
        if self.rebuild_pending:
            return 503, {**body, "status": "UNAVAILABLE", "reason": "index rebuild in progress"}
        try:
            self.backends.session().execute(
                f"SELECT key FROM {seed.cql_identifier(self.config.keyspace)}.system_properties LIMIT 1",
                timeout=PROBE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
            self.backends.reset()
            return 503, {**body, "status": "UNAVAILABLE", "reason": f"cassandra: {exc}"}
        try:
            es = self.backends.es()
            health = es.cluster.health()["status"]
            indices = sorted(es.indices.get(index=seed.INDEX_PATTERN, allow_no_indices=True))
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
            self.backends.reset()
            return 503, {**body, "status": "UNAVAILABLE", "reason": f"elasticsearch: {exc}"}
        if health == "red":
            return 503, {**body, "status": "UNAVAILABLE", "reason": "elasticsearch: cluster health is red"}
        if not indices:
            return 503, {**body, "status": "UNAVAILABLE", "reason": f"elasticsearch: no {seed.INDEX_PATTERN} index"}
        return 200, {**body, "status": "OK", "index": ",".join(indices)}


def _handler(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/api/status":
                self._send(404, {"status": "NOT_FOUND", "reason": self.path})
                return
            self._send(*standin.status())

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler


def write_application_conf(path: Path, *, cassandra_hosts: list[str], cassandra_port: int = 9042,
                           keyspace: str, username: str | None = None, password: str | None = None,
                           es_hosts: list[str], es_port: int = 9200, files_dir: Path | None = None,
                           force_drop_and_rebuild_index: bool = False) -> Path:
    """Write a TheHive-shaped ``application.conf`` (the keys the real one uses for these settings)."""
    q = json.dumps  # JSON strings and lists are valid HOCON values
    storage = ["backend = cql", f"hostname = {q(cassandra_hosts)}", f"port = {cassandra_port}",
               f"cql {{ keyspace = {q(keyspace)} }}"]
    if username is not None:
        storage += [f"username = {q(username)}", f"password = {q(password or '')}"]
    lines = [
        "db.janusgraph {",
        "  storage {", *(f"    {s}" for s in storage), "  }",
        "  index.search {",
        "    backend = elasticsearch", f"    hostname = {q(es_hosts)}", f"    port = {es_port}",
        "  }",
        f"  forceDropAndRebuildIndex = {'true' if force_drop_and_rebuild_index else 'false'}",
        "}",
    ]
    if files_dir is not None:
        lines += ["storage {", "  provider = localfs", f"  localfs.location = {q(str(files_dir))}", "}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_standin(root: Path, *, address: str, port: int = 9000, conf: Path) -> proc.Service:
    """Service scripts under ``root`` that run the stand-in with ``conf`` on ``address:port``."""
    return proc.write_service(
        root, "thehive-standin",
        [sys.executable, "-m", "tests.stack.thehive_standin", "--config", str(conf), "--listen",
         f"{address}:{port}"],
        env={"PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT, grace_seconds=10)


def get_status(url: str, timeout: float = PROBE_TIMEOUT + 3) -> tuple[int, dict[str, Any]]:
    """HTTP code and JSON body of ``<url>/api/status``; (0, {"reason": ...}) if nothing answers."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/status", timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.load(err)
    except (OSError, ValueError) as exc:
        return 0, {"reason": str(exc)}


def wait_healthy(url: str, timeout: float = 120, service: proc.Service | None = None) -> dict[str, Any]:
    """Wait until ``<url>/api/status`` answers 200 (``url`` is the base, e.g. http://127.0.0.61:9000)."""
    last: list[dict[str, Any]] = [{}]

    def healthy() -> bool:
        code, last[0] = get_status(url)
        return code == 200

    try:
        proc.wait_until(healthy, f"TheHive stand-in healthy at {url}", timeout, service)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\nlast status: {last[0]}") from None
    return last[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--listen", required=True, help="address:port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cassandra").setLevel(logging.ERROR)  # reconnect noise while a backend is down
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)
    host, _, port = args.listen.rpartition(":")
    standin = StandIn(load_config(args.config))
    server = ThreadingHTTPServer((host, int(port)), _handler(standin))
    server.daemon_threads = True
    log.info("TheHive stand-in (not TheHive) on %s, keyspace %s, forceDropAndRebuildIndex=%s",
             args.listen, standin.config.keyspace, standin.config.force_rebuild_index)
    if standin.config.force_rebuild_index:
        threading.Thread(target=standin.rebuild_index_until_done, name="index-rebuild", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    finally:
        server.server_close()
        standin.backends.reset()
        log.info("stopped")


if __name__ == "__main__":
    main()
