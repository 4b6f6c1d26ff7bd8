"""The typed model of one TheHive deployment ("stack"), as an operator describes it in YAML.

Every model forbids unknown keys, so a typo is an error that names the field instead of a setting
that silently does nothing. Secrets are references (environment variable or Prefect Secret block),
never literal values. Cross-references (a service on an unknown node, ...) are checked by
``Stack`` itself so that a model built in Python is held to the same rules as a loaded file.

Near 500 lines on purpose: it is the stack file's one schema, a class per section in file order,
and a reader checking a field should find every rule for it here rather than across modules.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

CQL_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}\Z")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
PRIVILEGE_WORD = re.compile(r"^[A-Za-z0-9._/=:-]{1,200}\Z")


def cql_identifier(value: str) -> str:
    """Keyspace and table names go into CQL statements: only plain identifiers are accepted."""
    if not CQL_IDENTIFIER.match(value):
        raise ValueError(
            f"{value!r} is not a valid CQL identifier (a letter, then letters, digits or _; "
            "at most 48 characters)"
        )
    return value


def plain_name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"{value!r} is not a valid name (letters, digits, '.', '_', '-')")
    return value


OWNER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?\Z")
HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def host_address(value: str) -> str:
    """An IP address or a DNS host name, nothing else: addresses reach argv lists and SSH, and a
    value such as ``-oProxyCommand=...`` must never look like an option."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if len(value) > 253 or not all(HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"{value!r} is neither an IP address nor a host name (letters, digits and "
                         "'-' in dot-separated labels, none starting or ending with '-')")
    return value


CqlIdentifier = Annotated[str, AfterValidator(cql_identifier)]
HostAddress = Annotated[str, AfterValidator(host_address)]
Name = Annotated[str, AfterValidator(plain_name)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretNotFound(LookupError):
    """A referenced secret could not be read (unset variable, missing block)."""


def _secret_reference(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(
            "write a reference, {env: VARIABLE} or {prefect_secret: BLOCK_NAME}, "
            "never the secret itself"
        )
    return value


class SecretRef(Model):
    """Where a secret is read at run time: an environment variable or a Prefect Secret block."""

    env: str | None = None
    prefect_secret: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.prefect_secret is None):
            raise ValueError("give exactly one of 'env' or 'prefect_secret'")
        return self

    def resolve(self) -> SecretStr:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise SecretNotFound(f"environment variable {self.env} is not set")
            return SecretStr(value)
        from prefect.blocks.system import Secret

        assert self.prefect_secret is not None  # _exactly_one
        try:
            block: Any = Secret.load(self.prefect_secret)
            return SecretStr(str(block.get()))
        except ValueError as exc:
            raise SecretNotFound(f"Prefect Secret block {self.prefect_secret!r}: {exc}") from exc

    def __str__(self) -> str:
        return f"env:{self.env}" if self.env else f"prefect_secret:{self.prefect_secret}"


Secret = Annotated[SecretRef, BeforeValidator(_secret_reference)]


def _readable_file(value: str | None, info: ValidationInfo) -> str | None:
    """Key and known_hosts files must be readable where the flows run (unless checks are off)."""
    if value is None:
        return None
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    if (info.context or {}).get("check_files", True):
        if not path.is_file():
            raise ValueError(f"file {path} does not exist")
        if not os.access(path, os.R_OK):
            raise ValueError(f"file {path} is not readable")
    return str(path)


ReadableFile = Annotated[str, AfterValidator(_readable_file)]


class SshSettings(Model):
    """How to reach a host over SSH. Host keys are always verified against ``known_hosts``."""

    user: str = "root"
    port: int = Field(22, ge=1, le=65535)
    key_file: ReadableFile | None = None
    known_hosts: ReadableFile
    allow_unknown_hosts: bool = False
    connect_timeout: float = Field(15, gt=0)
    #: Streams (backup, restore, rebuild bytes) through the OpenSSH client when ``ssh`` is installed:
    #: less than half paramiko's CPU per byte (tasks/openssh.py). Commands always use paramiko.
    openssh_streams: bool = True
    #: Put before the commands that need more than ``user`` may do (reading service data folders,
    #: moving them, chown, service managers), e.g. ``["sudo", "-n"]``; empty when ``user`` is root.
    privilege_prefix: list[str] = Field(default_factory=list, max_length=8)

    @field_validator("privilege_prefix")
    @classmethod
    def _plain_words(cls, value: list[str]) -> list[str]:
        """Words of an argv, never a shell line: what ``shlex.join`` quotes as one argument each."""
        for word in value:
            if not PRIVILEGE_WORD.match(word):
                raise ValueError(f"{word!r} is not a plain command word (letters, digits, and . _ / = : - ; "
                                 "one argv word per list item, e.g. [sudo, -n])")
        if value and value[0].startswith("-"):
            raise ValueError(f"must start with a command (e.g. sudo), not the option {value[0]!r}")
        return value


Role = Literal["cassandra", "elasticsearch", "thehive", "files"]


class Node(Model):
    name: Name
    address: HostAddress
    roles: list[Role] = Field(min_length=1)
    transport: Literal["ssh", "local"] = "ssh"
    ssh: SshSettings | None = None


class Systemd(Model):
    kind: Literal["systemd"]
    unit: Name
    sudo: bool = False


class DockerCompose(Model):
    kind: Literal["docker-compose"]
    compose_file: str
    service: Name
    project_dir: str | None = None


class CommandManager(Model):
    """Explicit argv lists, for installs managed by scripts (and the test stack)."""

    kind: Literal["command"]
    start: list[str] = Field(min_length=1)
    stop: list[str] = Field(min_length=1)
    status: list[str] = Field(min_length=1)


Manager = Annotated[Systemd | DockerCompose | CommandManager, Field(discriminator="kind")]


class ServicePath(Model):
    """A folder a cold backup copies on every node of its service (config, data, logs...).

    ``path`` is absolute and may contain ``{node}``, replaced by the node's name.
    """

    name: Name
    path: str

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} is not an absolute path")
        if any(part == ".." for part in value.split("/")):
            raise ValueError(f"{value!r} must not contain '..'")
        return value.rstrip("/") or "/"


class Service(Model):
    name: Literal["thehive", "elasticsearch", "cassandra"]
    nodes: list[Name] = Field(min_length=1)
    manager: Manager
    health_url: str | None = None
    #: TheHive only: its application.conf, edited for a restore's index rebuild.
    config_file: str | None = None
    stop_timeout: float = Field(300, gt=0)
    start_timeout: float = Field(600, gt=0)
    #: Folders saved by a cold backup (and restored by a cold restore), per node.
    paths: list[ServicePath] = []

    @field_validator("paths")
    @classmethod
    def _unique_path_names(cls, value: list[ServicePath]) -> list[ServicePath]:
        names = [p.name for p in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate path name(s): {', '.join(dupes)}")
        return value


class Hook(Model):
    """A command run on one node at a step of a cold backup or restore.

    ``{node}``, ``{backup_id}`` and ``{stack}`` in the argv are replaced at run time.
    """

    node: Name
    argv: list[str] = Field(min_length=1)
    timeout: float = Field(600, gt=0)


class Hooks(Model):
    """Operator hooks (hypervisor or volume snapshots...): see deployments/hooks/."""

    before_stop: list[Hook] = []
    after_stop: list[Hook] = []
    before_start: list[Hook] = []
    after_start: list[Hook] = []


REPLICATION_CLASSES = {
    "SimpleStrategy": "SimpleStrategy",
    "org.apache.cassandra.locator.SimpleStrategy": "SimpleStrategy",
    "NetworkTopologyStrategy": "NetworkTopologyStrategy",
    "org.apache.cassandra.locator.NetworkTopologyStrategy": "NetworkTopologyStrategy",
}
#: A replication factor: full replicas, or Cassandra 4's "full/transient" form.
REPLICATION_FACTOR = re.compile(r"^[0-9]{1,2}(/[0-9]{1,2})?\Z")


def check_replication(replication: dict[str, str | int]) -> str:
    """The keyspace replication a restore will create, checked before anything is dropped.

    A typo (``NetworkTopologyStrateg``) would otherwise pass every dry run and only fail on
    CREATE KEYSPACE, after the live keyspace is gone. Returns the short class name.
    """
    if "class" not in replication:
        raise ValueError("replication needs a 'class'")
    cls = REPLICATION_CLASSES.get(str(replication["class"]))
    if cls is None:
        raise ValueError(f"replication.class {replication['class']!r} is not one of "
                         "SimpleStrategy, NetworkTopologyStrategy")
    options = {k: str(v) for k, v in replication.items() if k != "class"}
    if not options:
        raise ValueError(f"replication: {cls} needs a replication factor "
                         f"({'replication_factor' if cls == 'SimpleStrategy' else 'a datacenter name'}: N)")
    if cls == "SimpleStrategy" and set(options) != {"replication_factor"}:
        raise ValueError(f"replication: SimpleStrategy takes only 'replication_factor', not "
                         f"{sorted(set(options) - {'replication_factor'})}")
    for key, value in options.items():
        if not REPLICATION_FACTOR.match(value):
            raise ValueError(f"replication.{key}: {value!r} is not a replication factor (e.g. 3)")
        if key != "replication_factor" and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z", key):
            raise ValueError(f"replication: {key!r} is not a datacenter name")
    if all(int(v.split("/")[0]) == 0 for v in options.values()):
        raise ValueError("replication: every replication factor is 0; the keyspace would hold no data")
    return cls


class CassandraNodeSettings(Model):
    """How Cassandra is operated on one node; the defaults fit a package install."""

    nodetool: list[str] = ["nodetool"]
    sstableloader: list[str] = ["sstableloader"]
    data_dirs: list[str] = ["/var/lib/cassandra/data"]
    commitlog_dir: str = "/var/lib/cassandra/commitlog"
    staging_dir: str = "/var/tmp/thehive-backup"
    #: A node rebuild moves these aside too (cassandra.yaml's hints_directory, saved_caches_directory).
    hints_dir: str = "/var/lib/cassandra/hints"
    saved_caches_dir: str = "/var/lib/cassandra/saved_caches"
    #: Where a node rebuild looks for "Startup complete"; a file absent on the node skips that check.
    log_file: str | None = "/var/log/cassandra/system.log"
    #: ``user[:group]`` of the files a node rebuild unpacks; default: the data folder's owner.
    owner: str | None = None
    #: The Prefect work queue of a worker near this node (its datacenter's): set, a hot backup's
    #: archiving of this node's tables runs there, through ``cassandra.node_backup_deployment``.
    work_queue: Name | None = None

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: str | None) -> str | None:
        if value is not None and not OWNER.match(value):
            raise ValueError(f"{value!r} is not user[:group] (names or numeric ids)")
        return value


class Cassandra(Model):
    keyspaces: list[CqlIdentifier] = Field(default=["thehive"], min_length=1)
    cql_port: int = Field(9042, ge=1, le=65535)
    contact_points: list[HostAddress] | None = None
    username: str | None = None
    password: Secret | None = None
    replication: dict[str, str | int] = {
        "class": "NetworkTopologyStrategy",
        "replication_factor": 3,
    }
    node_defaults: CassandraNodeSettings = CassandraNodeSettings()
    nodes: dict[str, CassandraNodeSettings] = {}
    #: hot backups read every row (consistency ALL) for a row count and digest per table; off:
    #: a full read loads the cluster on every run, and the restore drill proves a default backup
    #: against the live tables instead (tasks/drill.py). A run may override it.
    record_digests: bool = False
    #: Hot backups also archive each node's system keyspaces (what a node rebuild needs).
    include_system_keyspaces: bool = False
    #: How hot backups store tables: one archive per table and node (the guide's format), or
    #: each SSTable component once under its content name, so a second backup sends only new
    #: files (docs/FORMAT.md, "Incremental mode"), the default.
    storage: Literal["archive", "incremental"] = "incremental"
    #: Table streams of a hot backup at once from each node, and from all nodes together (none
    #: beyond the per-node count by default): the runner compresses and hashes every stream, so
    #: a small runner backing up many nodes caps the sum. A run's tables_per_node overrides the first.
    streams_per_node: int = Field(2, ge=1)
    max_streams: int | None = Field(None, ge=1)
    #: Incremental storage: streams one table's new files go over at once, in groups of about
    #: 64 MiB, so that one big table does not bound the run (the two counts above count tables);
    #: a restore stages a big table's components over as many streams.
    streams_per_table: int = Field(2, ge=1)
    #: The deployment that archives a node's tables on the node's ``work_queue`` (flows/node_backup.py).
    #: (A pydantic pattern is a Rust regex: there ``$`` is the very end.)
    node_backup_deployment: str = Field("node-backup/node-backup", pattern=r"^[\w.-]+/[\w.-]+$")

    @model_validator(mode="after")
    def _credentials_together(self) -> Cassandra:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both 'username' and 'password', or neither")
        return self

    @field_validator("replication")
    @classmethod
    def _known_replication(cls, value: dict[str, str | int]) -> dict[str, str | int]:
        check_replication(value)
        return value

    def settings_for(self, node: str) -> CassandraNodeSettings:
        return self.nodes.get(node, self.node_defaults)


class SnapshotRepository(Model):
    name: Name = "thehive-backup"
    type: Literal["fs", "s3"] = "fs"
    settings: dict[str, Any] = {"location": "/mnt/es-backups"}


class Elasticsearch(Model):
    url: str
    username: str | None = None
    password: Secret | None = None
    verify_certs: bool = True
    ca_certs: ReadableFile | None = None
    index_patterns: list[str] = Field(default=["thehive_global*"], min_length=1)
    snapshot_repository: SnapshotRepository = SnapshotRepository()
    request_timeout: float = Field(60, gt=0)

    @model_validator(mode="after")
    def _both_or_neither(self) -> Elasticsearch:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both 'username' and 'password', or neither")
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")


class FolderAttachments(Model):
    kind: Literal["folder"]
    node: Name
    path: str = "/opt/thp/thehive/files"
    owner: str | None = None
    group: str | None = None


class S3Settings(Model):
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    #: Asked of the server for every object written (the key id only with aws:kms).
    server_side_encryption: Literal["AES256", "aws:kms"] | None = None
    sse_kms_key_id: str | None = None

    @model_validator(mode="after")
    def _keys_together(self):
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both 'access_key_id' and 'secret_access_key', or neither")
        if self.sse_kms_key_id and self.server_side_encryption != "aws:kms":
            raise ValueError("sse_kms_key_id needs server_side_encryption: aws:kms")
        return self

    def write_args(self) -> dict[str, str]:
        """The extra arguments of every PUT (boto3's names)."""
        args: dict[str, str] = {}
        if self.server_side_encryption:
            args["ServerSideEncryption"] = self.server_side_encryption
        if self.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.sse_kms_key_id
        return args


class S3Attachments(S3Settings):
    kind: Literal["s3"]


Attachments = Annotated[FolderAttachments | S3Attachments, Field(discriminator="kind")]


class Encryption(Model):
    """Client-side encryption of every object (docs/FORMAT.md, "Encryption"): the key to write
    with, and earlier keys kept for reading older backups. References only, never key bytes."""

    key: Secret
    old_keys: list[Secret] = []


class RepositoryCommon(Model):
    encryption: Encryption | None = None
    #: A bandwidth cap (MiB/s) on the bytes stored and read, shared by every stream of a run
    #: (tasks/repositories/throttled.py); none by default.
    max_mib_per_second: float | None = Field(None, gt=0)


class LocalRepository(RepositoryCommon):
    kind: Literal["local"]
    path: str


class SftpRepository(RepositoryCommon):
    kind: Literal["sftp"]
    host: HostAddress
    path: str
    ssh: SshSettings


class S3Repository(S3Settings, RepositoryCommon):
    kind: Literal["s3"]


RepositorySettings = Annotated[
    LocalRepository | SftpRepository | S3Repository, Field(discriminator="kind")
]


class Retention(Model):
    keep_last: int | None = Field(None, ge=1)
    keep_days: int | None = Field(None, ge=1)


class Stack(Model):
    name: Name
    ssh: SshSettings | None = None
    nodes: list[Node] = Field(min_length=1)
    services: list[Service] = []
    cassandra: Cassandra
    elasticsearch: Elasticsearch | None = None
    attachments: Attachments | None = None
    repository: RepositorySettings
    retention: Retention = Retention()
    hooks: Hooks = Hooks()

    @model_validator(mode="after")
    def _cross_references(self) -> Stack:
        problems: list[str] = []
        names = [n.name for n in self.nodes]
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                problems.append(f"nodes[{i}].name: duplicate node name {name!r}")
            seen.add(name)
        first_at: dict[str, str] = {}
        for i, node in enumerate(self.nodes):
            other = first_at.setdefault(node.address.lower(), node.name)
            if other != node.name:
                problems.append(f"nodes[{i}].address: {node.address!r} is already the address of node "
                                f"{other!r} (one node per address: each runs its own services)")
        by_name = {n.name: n for n in self.nodes}
        for i, node in enumerate(self.nodes):
            if node.transport == "ssh" and node.ssh is None and self.ssh is None:
                problems.append(
                    f"nodes[{i}].ssh: node {node.name!r} uses transport ssh but neither the node "
                    "nor the stack has 'ssh' settings"
                )
        for i, svc in enumerate(self.services):
            for j, n in enumerate(svc.nodes):
                if n not in by_name:
                    problems.append(f"services[{i}].nodes[{j}]: unknown node {n!r}")
        for step in ("before_stop", "after_stop", "before_start", "after_start"):
            for i, hook in enumerate(getattr(self.hooks, step)):
                if hook.node not in by_name:
                    problems.append(f"hooks.{step}[{i}].node: unknown node {hook.node!r}")
        for n in self.cassandra.nodes:
            if n not in by_name:
                problems.append(f"cassandra.nodes.{n}: unknown node {n!r}")
            elif "cassandra" not in by_name[n].roles:
                problems.append(f"cassandra.nodes.{n}: node {n!r} does not have the role cassandra")
        if not any("cassandra" in n.roles for n in self.nodes):
            problems.append("nodes: no node has the role cassandra")
        if isinstance(self.attachments, FolderAttachments) and self.attachments.node not in by_name:
            problems.append(f"attachments.node: unknown node {self.attachments.node!r}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # -- views used by the flows ------------------------------------------------------------
    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r} in stack {self.name!r}")

    def nodes_with(self, role: Role) -> list[Node]:
        return [n for n in self.nodes if role in n.roles]

    def ssh_for(self, node: Node) -> SshSettings:
        settings = node.ssh or self.ssh
        if settings is None:
            raise ValueError(f"node {node.name!r} has no ssh settings")
        return settings

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def contact_points(self) -> list[str]:
        return self.cassandra.contact_points or [n.address for n in self.nodes_with("cassandra")]
