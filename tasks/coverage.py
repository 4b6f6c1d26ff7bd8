"""Which hosts' archives a keyspace needs so that every row has a copy.

With a replication factor RF each row is on RF nodes of its group (the ring for SimpleStrategy,
each data center for NetworkTopologyStrategy), so fewer than RF missing nodes of a group still
leave a copy of every row. Host folders are matched to the stack's nodes by name, address or
first DNS label. Plain logic: the guide-backup reader (tasks/reference.py) uses it, and so can
anything else that must prove coverage before loading (a node rebuild, a partial restore).
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def match_hosts(folders: Iterable[str], nodes: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Host folder → node name (``nodes``: name → address), by name, address, or first DNS
    label of a hostname; and the problems (a folder that fits two nodes, two folders one node)."""
    def label(s: str) -> str | None:
        try:
            ipaddress.ip_address(s)
            return None
        except ValueError:
            return s.split(".", 1)[0].lower()

    matched, problems = {}, []
    for folder in folders:
        exact = [n for n, a in nodes.items() if folder.lower() in (n.lower(), a.lower())]
        fits = exact or [n for n in nodes if label(folder) is not None and label(folder) == label(n)]
        if len(fits) > 1:
            problems.append(f"host folder {folder} fits several nodes ({', '.join(fits)})")
        elif fits:
            matched[folder] = fits[0]
    by_node: dict[str, list[str]] = {}
    for folder, node in matched.items():
        by_node.setdefault(node, []).append(folder)
    problems += [f"host folders {', '.join(sorted(fs))} all match node {n}: keep one"
                 for n, fs in by_node.items() if len(fs) > 1]
    return matched, problems


def _full(value: str | int) -> int:
    """Full replicas of an RF option ('3', 3, or '3/1' with one transient replica)."""
    total, _, transient = str(value).partition("/")
    return int(total) - int(transient or 0)


def replica_groups(replication: dict, node_dcs: dict[str, str | None]) -> list[tuple[str, set[str], int]]:
    """(where, nodes, RF there): a row has RF copies among those nodes. SimpleStrategy: one
    ring; NetworkTopologyStrategy: one group per data center; any other class: no group."""
    cls = str(replication.get("class", "")).rsplit(".", 1)[-1]
    if cls == "SimpleStrategy":
        every = set(node_dcs)
        return [("cluster", every, min(_full(replication.get("replication_factor", 1)), len(every)))]
    if cls != "NetworkTopologyStrategy":
        return []
    by_dc: dict[str, set[str]] = {}
    for node, dc in node_dcs.items():
        if dc is not None:
            by_dc.setdefault(dc, set()).add(node)
    groups = []
    for dc, members in sorted(by_dc.items()):
        rf = replication.get(dc, replication.get("replication_factor"))
        if rf is not None and _full(rf) > 0:
            groups.append((f"data center {dc}", members, min(_full(rf), len(members))))
    return groups


def missing_hosts(table_hosts: dict[str, set[str]], node_dcs: dict[str, str | None],
                  replication: dict) -> dict[str, set[str]]:
    """Table → the nodes whose archives it lacks, for tables whose rows are NOT all covered.

    Covered: in some group, fewer than RF of its nodes are missing (a node of unknown data center
    that is missing counts as missing everywhere). No group (unknown strategy): every node needed.
    """
    groups = replica_groups(replication, node_dcs)
    unknown = {n for n, dc in node_dcs.items() if dc is None}
    lost = {}
    for table, present in table_hosts.items():
        missing = set(node_dcs) - present
        if not missing:
            continue
        if not any(len(missing & members) + len(missing & unknown - members) < rf
                   for _, members, rf in groups):
            lost[table] = missing
    return lost


def describe(replication: dict) -> str:
    return ", ".join(f"{k}: {str(v).rsplit('.', 1)[-1]}" for k, v in replication.items())


def coverage(table_hosts: dict[str, dict[str, set[str]]], folders: list[str], nodes: dict[str, str],
             node_dcs: dict[str, str | None], replications: dict[str, dict],
             allow_partial: bool) -> tuple[list[str], list[str]]:
    """Lines and problems of the coverage proof, per keyspace (see ``missing_hosts``)."""
    matched, problems = match_hosts(folders, nodes)
    notes = [f"host folder {f} → node {n}" for f, n in sorted(matched.items())]
    notes += [f"host folder {f} matches no Cassandra node of the stack ({', '.join(nodes)}; by "
              "name, address or first DNS label): loaded, but counted as no node's copy"
              for f in folders if f not in matched]
    dcs = {n: node_dcs.get(n) for n in nodes}
    for ks, tables in sorted(table_hosts.items()):
        present = {t: {matched[h] for h in hosts if h in matched} for t, hosts in tables.items()}
        replication = replications.get(ks) or {}
        lost = missing_hosts(present, dcs, replication)
        where = f"keyspace {ks} (replication {describe(replication)})"
        if not lost:
            absent = sorted(set(nodes) - set().union(*present.values()))
            notes.append(f"{where}: every row has a copy in the archives"
                         + (f" (no archives from {', '.join(absent)})" if absent else ""))
            continue
        hosts = sorted(set().union(*lost.values()))
        what = "" if len(lost) == len(tables) else f" for tables {', '.join(sorted(lost))}"
        line = (f"{where}: no archives from host(s) {', '.join(hosts)}{what}, so rows kept only "
                "there are not in this backup")
        if allow_partial:
            notes.append(f"PARTIAL restore (allow_partial=True): {line}")
        else:
            problems.append(f"{line}. Add those hosts' folders (named as the node: its name, "
                            "address or hostname), or pass allow_partial=True to restore only "
                            "what is there")
    return notes, problems
