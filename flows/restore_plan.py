"""What a restore will do, proved before any change: the request, the checks, the plan.

Step 1 of flows/restore.py. Nothing here changes a system: it reads the backup (or a guide-made
one), re-hashes objects, runs the scratch-keyspace CQL and measures free space, and either returns
a ``Plan`` or raises ``RestoreRefused`` listing every problem at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from config.model import LocalRepository, Stack, cql_identifier
from flows.common import RestoreRefused
from tasks import elasticsearch, es_repository
from tasks.cassandra_restore import LoadJob, choose_method, plan_import, plan_loader
from tasks.catalog import resolve_backup_id
from tasks.manifest import CassandraRecord, ElasticsearchRecord, Manifest, ObjectEntry, read_manifest
from tasks.reference import load_reference_task
from tasks.repositories import open_repository
from tasks.repositories.crypto import EncryptionError
from tasks.restore_checks import (
    UNKNOWN_RATIO,
    SpaceNeed,
    check_prerequisites_task,
    cluster_view,
)
from tasks.staging import StagedArchive, staging_root
from tasks.validate import check_objects, check_objects_task, check_part_paths, check_schema


@dataclass(frozen=True)
class RestoreRequest:
    """What the operator asked for: the restore flow's parameters as one value."""

    backup_id: str
    components: list[str]
    keyspace: str | None
    target_keyspace: str | None
    cassandra_method: str = "auto"
    index_strategy: str = "snapshot"
    verify_checksums: bool = True
    mirror_files: bool = False
    reference_backup: str = ""
    reference_date: str = ""
    allow_partial: bool = False


@dataclass
class Plan:
    """Everything the act phase needs, settled by the checks."""

    backup_id: str
    manifest: Manifest
    components: list[str]
    targets: dict[str, str]  # source keyspace -> keyspace restored into
    method: str | None
    index_strategy: str
    mirror_files: bool
    objects: list[ObjectEntry]
    staged: dict[str, list[StagedArchive]] = field(default_factory=dict)  # per source keyspace
    #: objects left for staging to prove: it hashes and walks each as it extracts it (one read,
    #: not two); if staging fails, they are checked like the others, to name every problem
    proved_by_staging: list[ObjectEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped, and why
    es_put_back: bool = False  # the ES snapshot is missing: its files come back from the repository

    def summary(self) -> dict:
        return {"backup_id": self.backup_id, "components": self.components,
                "keyspaces": list(self.targets), "targets": self.targets,
                "target_keyspace": next(iter(self.targets.values()), None),
                "cassandra_method": self.method, "index_strategy": self.index_strategy,
                "objects_verified": len(self.objects),
                "archives_to_stage": sum(len(s) for s in self.staged.values()),
                **({"reference": self.notes} if self.notes else {}),
                **({"elasticsearch_snapshot": "put back from the repository"} if self.es_put_back else {})}



def request_problems(request: RestoreRequest) -> list[str]:
    """The names given by hand, checked before anything else (nothing is stopped on a typo)."""
    problems = []
    for name, value in (("keyspace", request.keyspace), ("target_keyspace", request.target_keyspace)):
        if value is not None:
            try:
                cql_identifier(value)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    return problems


def check(st: Stack, request: RestoreRequest, staging_proves: bool = False) -> Plan:
    """Everything that can be checked before the first change; a refusal lists every problem.

    ``staging_proves`` (a confirmed restore): the table archives (or components) are not read
    here but by staging, which checks their bytes as it extracts them, before any live change.
    A dry run, or a refusal for another reason, reads them here too."""
    r = request
    backup_id, components, keyspace, target_keyspace = r.backup_id, r.components, r.keyspace, r.target_keyspace
    reference_backup, index_strategy = r.reference_backup, r.index_strategy
    notes: list[str] = []
    if reference_backup:  # proved readable and covering every row before anything is touched
        ref = load_reference_task(st, reference_backup, keyspace, r.reference_date, r.allow_partial)
        if ref.problems or ref.manifest is None:
            raise RestoreRefused(reference_backup, ref.problems or ["no archive to restore"])
        manifest, notes = ref.manifest, ref.notes
        bid, components = manifest.backup_id, ["cassandra"]
        repo_stack = st.model_copy(update={"repository": LocalRepository(kind="local", path=reference_backup)})
    else:
        repo_stack = st
        try:
            with open_repository(st) as repo:
                bid = resolve_backup_id(repo, backup_id)
                manifest = read_manifest(repo, bid)
        except EncryptionError as exc:  # wrong or missing key: refused before anything changes
            raise RestoreRefused(backup_id, [str(exc)]) from None
    recorded = manifest.cassandra or CassandraRecord()
    keyspaces = [keyspace] if keyspace else sorted(recorded.keyspaces)
    if target_keyspace and len(keyspaces) != 1:
        raise RestoreRefused(bid, ["target_keyspace needs exactly one source keyspace (set 'keyspace')"])
    targets = {ks: (target_keyspace or ks).lower() for ks in keyspaces}

    problems = [f"component {c} is not in backup {bid} ({', '.join(manifest.components)})"
                for c in components if c not in manifest.components]
    objects = [o for o in manifest.objects if o.component in components
               and (o.component != "cassandra" or o.keyspace in keyspaces)]

    def left_to_staging(o: ObjectEntry) -> bool:
        return staging_proves and o.component == "cassandra" and o.table is not None

    read_now = [o for o in objects if not left_to_staging(o)]
    later = [o for o in objects if left_to_staging(o)]
    unsafe = [p for o in later if (p := check_part_paths(o))]  # no read needed
    # Re-hashing the objects (here) and asking the cluster (there) only read: done at once.
    validation = check_objects_task.submit(repo_stack, manifest.model_copy(update={"objects": read_now}),
                                           checksums=r.verify_checksums)
    plan = Plan(bid, manifest, components, targets if "cassandra" in components else {}, None,
                index_strategy, r.mirror_files, objects, notes=notes, proved_by_staging=later)
    cassandra: list[str] = []
    try:
        if "cassandra" in components:
            cassandra = cassandra_problems(st, plan, recorded, keyspaces, r.cassandra_method,
                                           live_checks=not problems)
    finally:
        validation.wait()
    problems += validation.result() + unsafe + cassandra
    if "elasticsearch" in components and index_strategy == "snapshot":
        if st.elasticsearch is None:
            problems.append("the stack has no elasticsearch section")
        elif manifest.elasticsearch:
            es_problems, plan.es_put_back = es_snapshot_problems(st, repo_stack, manifest.elasticsearch,
                                                                 r.verify_checksums)
            problems += es_problems
    if "elasticsearch" in components and index_strategy == "rebuild":
        svc = st.service("thehive")
        if svc is None or not svc.config_file:
            problems.append("index_strategy 'rebuild' needs services[thehive].config_file")
    if "files" in components and st.attachments is None:
        problems.append("the stack has no attachments section")
    if problems:
        # refused anyway: read the tables' objects too (their unsafe paths are listed already)
        problems += check_objects(repo_stack, later, checksums=r.verify_checksums)
        raise RestoreRefused(bid, list(dict.fromkeys(problems)))
    return plan


def cassandra_problems(st: Stack, plan: Plan, recorded: CassandraRecord, keyspaces: list[str],
                       method: str, live_checks: bool = True) -> list[str]:
    """Schema, cluster (all UN), replication, space and the scratch CQL; settles the plan's
    method and staging. Replication, space and CQL are checked only when nothing else is wrong
    with the request (``live_checks``), the schema and the cluster."""
    problems = check_schema(plan.manifest, keyspaces)
    cluster, topo = cluster_view(st)
    problems += cluster
    if problems or topo is None or not live_checks:
        return problems
    if method == "auto":
        method = (choose_method(recorded, CassandraRecord.model_validate(topo)) if recorded.nodes
                  else "sstableloader")  # no recorded topology: route rows afresh
    plan.method = method
    plan.staged = staging_plan(st, plan, recorded)
    return check_prerequisites_task(
        st, {ks: recorded.keyspaces[ks].schema_cql for ks in keyspaces},
        space_needs(st, plan), topo["nodes"])


def es_snapshot_problems(st: Stack, repo_stack: Stack, record: ElasticsearchRecord,
                         checksums: bool) -> tuple[list[str], bool]:
    """The snapshot is in ES (today's path), or the backup's copy of the ES repository can be put
    back (True): then that copy is validated like every other object."""
    assert st.elasticsearch is not None
    if (missing := elasticsearch.check_snapshot(st.elasticsearch, record)) is None:
        return [], False
    if not record.files:
        return [missing], False
    if problem := es_repository.put_back_problem(st, record):
        return [f"{missing}; {problem}"], False
    return check_objects(repo_stack, record.files, checksums=checksums), True


def staging_plan(st: Stack, plan: Plan, recorded: CassandraRecord) -> dict[str, list[StagedArchive]]:
    staged = {}
    for ks, target in plan.targets.items():
        archives = [o for o in plan.objects if o.keyspace == ks and o.table]
        jobs: list[LoadJob] = (plan_import(archives, recorded.nodes, st) if plan.method == "import"
                               else plan_loader(archives, st))
        staged[ks] = [StagedArchive(j.archive, j.node, staging_root(st, j.node, target), target)
                      for j in jobs]
    return staged


def space_needs(st: Stack, plan: Plan) -> list[SpaceNeed]:
    """Raw bytes staged on each node; loaded bytes per node (import: its own archives; the
    loader spreads every row over the replicas)."""
    staging: dict[str, int] = {n.name: 0 for n in st.nodes_with("cassandra")}
    for archives in plan.staged.values():
        for s in archives:
            staging[s.node] += s.archive.raw_size or s.archive.size * UNKNOWN_RATIO
    if plan.method == "import":
        data = dict(staging)
    else:
        replicas = max((int(str(v).split("/")[0]) for k, v in st.cassandra.replication.items()
                        if k != "class"), default=1)
        share = sum(staging.values()) * min(replicas, len(staging)) // max(len(staging), 1)
        data = {n: share for n in staging}
    return [SpaceNeed(n, staging[n], data[n]) for n in staging]
