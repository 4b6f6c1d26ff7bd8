"""Checks made before a backup touches anything; every failed check is reported, not just the first."""
from __future__ import annotations

import shutil

from config.model import LocalRepository, Stack
from tasks import cassandra, elasticsearch
from tasks.hosts import host_for
from tasks.layout import is_unattributed_tag, probe_key
from tasks.repositories import Repository, open_repository
from tasks.retry import side_effect_task


class PreflightFailed(RuntimeError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("preflight failed:\n- " + "\n- ".join(problems))


def check_nodes_reachable(stack: Stack, problems: list[str]) -> None:
    for node in stack.nodes:
        try:
            with host_for(stack, node) as host:
                host.run(["true"], timeout=30)
        except Exception as exc:
            problems.append(f"node {node.name} ({node.address}) unreachable: {exc}")


def check_cassandra(stack: Stack, keyspaces: list[str], problems: list[str], repo_id: str) -> dict:
    """The cluster, as one node sees it, shows every node UN; the keyspaces exist; leftover
    snapshots of backups into this repository (``repo_id``) cleared — the caller holds its lock,
    so none is in flight.

    Each nodetool call starts a JVM on the node (seconds each): ``status`` runs on one node for
    the whole cluster (the next node's view if that one fails), ``listsnapshots`` once per node.
    """
    facts: dict = {"stale_snapshots_cleared": [], "unattributed_snapshots": []}
    nodes = stack.nodes_with("cassandra")
    status_problems: list[str] = []
    for node in nodes:
        try:
            with host_for(stack, node) as host:
                status_problems = _status_problems(stack, cassandra.node_states(
                    host, stack.cassandra.settings_for(node.name)), node.name)
            break
        except Exception as exc:
            status_problems.append(f"{node.name}: nodetool status: {exc}")
    problems += status_problems
    for node in nodes:
        settings = stack.cassandra.settings_for(node.name)
        try:
            with host_for(stack, node) as host:
                tags = cassandra.list_snapshots(host, settings)
                for tag in cassandra.clear_leftover_snapshots(host, settings, repo_id, tags):
                    facts["stale_snapshots_cleared"].append(f"{node.name}:{tag}")
                facts["unattributed_snapshots"] += [  # an earlier version's: whose, we cannot tell
                    f"{node.name}:{t}" for t in sorted(tags) if is_unattributed_tag(t)]
                usage = host.run(host.privileged(["du", "-sk", *[f"{d}/{ks}" for d in settings.data_dirs
                                                  for ks in keyspaces]]), timeout=300, check=False)
                facts.setdefault("data_kib", {})[node.name] = sum(
                    int(line.split()[0]) for line in usage.text.splitlines() if line.strip())
        except Exception as exc:
            problems.append(f"{node.name}: {exc}")
    try:
        with cassandra.cql_session(stack) as session:
            session.cluster.refresh_schema_metadata()
            known = set(session.cluster.metadata.keyspaces)
            for ks in keyspaces:
                if ks not in known:
                    problems.append(f"keyspace {ks!r} does not exist in the cluster")
    except Exception as exc:
        problems.append(f"CQL connection to {', '.join(stack.contact_points())}: {exc}")
    return facts


def _status_problems(stack: Stack, states: dict[str, str], seen_from: str) -> list[str]:
    expected = {n.address for n in stack.nodes_with("cassandra")}
    bad = {a: s for a, s in states.items() if s != "UN"}
    missing = expected - set(states)
    if not (bad or missing):
        return []
    return [f"{seen_from}: nodetool status shows "
            + ", ".join([f"{a} {s}" for a, s in sorted(bad.items())]
                        + [f"{a} absent" for a in sorted(missing)])]


def check_elasticsearch(stack: Stack, problems: list[str]) -> dict:
    if stack.elasticsearch is None:
        problems.append("the elasticsearch component was asked for but the stack has no elasticsearch section")
        return {}
    try:
        return {"indices": elasticsearch.prepare(stack.elasticsearch)}
    except Exception as exc:
        problems.append(f"elasticsearch {stack.elasticsearch.url}: {exc}")
        return {}


def check_repository(stack: Stack, repo: Repository, needed_bytes: int, problems: list[str]) -> None:
    probe = probe_key()
    try:
        created = repo.put_if_absent(probe, b"probe")
        again = repo.put_if_absent(probe, b"probe")
        repo.delete(probe)
    except Exception as exc:
        problems.append(f"repository {repo.url} is not writable: {exc}")
        return
    if not created or again:  # the lock relies on it: two runs could both take it
        problems.append(f"repository {repo.url} does not honour an exclusive create "
                        "(S3: conditional PUT with If-None-Match); its lock would not be safe")
    if isinstance(stack.repository, LocalRepository):
        free = shutil.disk_usage(stack.repository.path).free
        if free < needed_bytes:
            problems.append(f"repository {repo.url}: {free >> 20} MiB free, about "
                            f"{needed_bytes >> 20} MiB needed")


def preflight(stack: Stack, components: list[str], keyspaces: list[str], repo_id: str) -> dict:
    """Run every check; ``repo_id`` (tasks.layout.repository_id) scopes the snapshot clean-up."""
    problems: list[str] = []
    facts: dict = {}
    check_nodes_reachable(stack, problems)
    if "cassandra" in components:
        facts["cassandra"] = check_cassandra(stack, keyspaces, problems, repo_id)
    if "elasticsearch" in components:
        facts["elasticsearch"] = check_elasticsearch(stack, problems)
    if "files" in components and stack.attachments is None:
        problems.append("the files component was asked for but the stack has no attachments section")
    needed = sum(facts.get("cassandra", {}).get("data_kib", {}).values()) * 1024
    with open_repository(stack) as repo:
        check_repository(stack, repo, needed, problems)
    if problems:
        raise PreflightFailed(problems)
    return facts


@side_effect_task(name="preflight", retry=False)
def preflight_task(stack: Stack, components: list[str], keyspaces: list[str], repo_id: str) -> dict:
    return preflight(stack, components, keyspaces, repo_id)
