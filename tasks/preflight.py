"""Checks made before a backup touches anything; every failed check is reported, not just the first."""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

from config.model import LocalRepository, Node, Stack
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
    def reach(node: Node) -> str | None:
        try:
            with host_for(stack, node) as host:
                host.run(["true"], timeout=30)
        except Exception as exc:
            return f"node {node.name} ({node.address}) unreachable: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=max(1, len(stack.nodes))) as pool:  # waits on the network
        problems += [p for p in pool.map(reach, stack.nodes) if p]


def check_cassandra(stack: Stack, keyspaces: list[str], problems: list[str], repo_id: str) -> dict:
    """The cluster, as one node sees it, shows every node UN; the keyspaces exist; leftover
    snapshots of backups into this repository (``repo_id``) cleared — the caller holds its lock,
    so none is in flight. The nodes, the status and the CQL check are looked at in parallel.

    ``nodetool status`` starts a JVM on the node (a second or more): it runs on one node for the
    whole cluster (the next node's view if that one fails). Snapshot tags are read from the data
    folders (one ``find`` per node), not by ``nodetool listsnapshots``.
    """
    nodes = stack.nodes_with("cassandra")
    with ThreadPoolExecutor(max_workers=len(nodes) + 2) as pool:
        status = pool.submit(_status_check, stack)
        cql = pool.submit(_keyspaces_check, stack, keyspaces)
        per_node = list(pool.map(lambda node: _node_check(stack, node, keyspaces, repo_id), nodes))
    problems += status.result()
    facts: dict = {"stale_snapshots_cleared": [], "unattributed_snapshots": []}
    for node, (node_problems, node_facts) in zip(nodes, per_node, strict=True):
        problems += node_problems
        facts["stale_snapshots_cleared"] += node_facts.get("stale_snapshots_cleared", [])
        facts["unattributed_snapshots"] += node_facts.get("unattributed_snapshots", [])
        if "data_kib" in node_facts:
            facts.setdefault("data_kib", {})[node.name] = node_facts["data_kib"]
    problems += cql.result()
    return facts


def _status_check(stack: Stack) -> list[str]:
    status_problems: list[str] = []
    for node in stack.nodes_with("cassandra"):
        try:
            with host_for(stack, node) as host:
                return _status_problems(stack, cassandra.node_states(
                    host, stack.cassandra.settings_for(node.name)), node.name)
        except Exception as exc:
            status_problems.append(f"{node.name}: nodetool status: {exc}")
    return status_problems


def _node_check(stack: Stack, node: Node, keyspaces: list[str], repo_id: str) -> tuple[list[str], dict]:
    """One node: its leftover snapshots of ours cleared, earlier versions' noted, data measured."""
    settings = stack.cassandra.settings_for(node.name)
    facts: dict = {}
    try:
        with host_for(stack, node) as host:
            tags = cassandra.snapshot_tags_on_disk(host, settings)
            facts["stale_snapshots_cleared"] = [
                f"{node.name}:{tag}" for tag in cassandra.clear_leftover_snapshots(host, settings, repo_id, tags)]
            facts["unattributed_snapshots"] = [  # an earlier version's: whose, we cannot tell
                f"{node.name}:{t}" for t in sorted(tags) if is_unattributed_tag(t)]
            usage = host.run(host.privileged(["du", "-sk", *[f"{d}/{ks}" for d in settings.data_dirs
                                              for ks in keyspaces]]), timeout=300, check=False)
            facts["data_kib"] = sum(int(line.split()[0]) for line in usage.text.splitlines() if line.strip())
    except Exception as exc:
        return [f"{node.name}: {exc}"], facts
    return [], facts


def _keyspaces_check(stack: Stack, keyspaces: list[str]) -> list[str]:
    try:
        with cassandra.cql_session(stack) as session:
            session.cluster.refresh_schema_metadata()
            known = set(session.cluster.metadata.keyspaces)
    except Exception as exc:
        return [f"CQL connection to {', '.join(stack.contact_points())}: {exc}"]
    return [f"keyspace {ks!r} does not exist in the cluster" for ks in keyspaces if ks not in known]


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
    found: dict[str, list[str]] = {"reach": [], "cassandra": [], "elasticsearch": []}
    with ThreadPoolExecutor(max_workers=3) as pool:  # the checks wait on the network, not on us
        reach = pool.submit(check_nodes_reachable, stack, found["reach"])
        cass = (pool.submit(check_cassandra, stack, keyspaces, found["cassandra"], repo_id)
                if "cassandra" in components else None)
        es = pool.submit(check_elasticsearch, stack, found["elasticsearch"]) if "elasticsearch" in components else None
    reach.result()
    for name, future in (("cassandra", cass), ("elasticsearch", es)):
        if future is not None:
            facts[name] = future.result()
    problems += found["reach"] + found["cassandra"] + found["elasticsearch"]
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
