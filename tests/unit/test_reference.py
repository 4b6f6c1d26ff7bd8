"""The guide's backup tree read as a restore plan: layout, skips, damage, and the coverage proof."""
from __future__ import annotations

import bz2
import io
import tarfile

import pytest

from tasks.coverage import match_hosts, missing_hosts
from tasks.reference import inspect_archive, plan_reference, reference_manifest, resolve_dates

ID = "3b1a0c905d8811ef87c71fc3a94044f4"
NODES = {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"}
DCS = dict.fromkeys(NODES, "dc1")
RF3 = {"class": "NetworkTopologyStrategy", "dc1": "3"}
RF1 = {"class": "SimpleStrategy", "replication_factor": "1"}


def write_archive(path, files: dict[str, bytes] | None) -> None:
    """A bzip2 tar as ``tar cjf X.tbz -C <snapshot> .`` makes it; None: the 14-byte empty one
    tar leaves when the snapshot folder does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if files is None:
        path.write_bytes(bz2.compress(b""))
        return
    with tarfile.open(path, "w:bz2") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def table_files(ks: str, table: str, host: str) -> dict[str, bytes]:
    return {"schema.cql": f"CREATE TABLE IF NOT EXISTS {ks}.{table} (k int PRIMARY KEY) "
                          f"WITH ID = 3b1a0c90-5d88-11ef-87c7-1fc3a94044f4;".encode(),
            "manifest.json": b"{}", "nb-1-big-Data.db": host.encode() * 64}


def guide_tree(root, hosts=("n1", "n2", "n3"), date="2026-11-27",
               tables=("edgestore", "graphindex"), keyspace="thehive"):
    """What the guide's script leaves on every host: our tables, system keyspaces, an empty
    archive for system/_paxos_repair_state and one for a table dropped earlier."""
    for host in hosts:
        day = root / host / date
        for t in tables:
            write_archive(day / keyspace / f"{t}-{ID}.tbz", table_files(keyspace, t, host))
        write_archive(day / keyspace / f"edgestore-{'0' * 32}.tbz", None)  # dropped earlier
        write_archive(day / "system" / f"_paxos_repair_state-{ID}.tbz", None)
        write_archive(day / "system" / f"local-{ID}.tbz", table_files("system", "local", host))
        write_archive(day / "system_auth" / f"roles-{ID}.tbz", table_files("system_auth", "roles", host))
    return root


def plan(folder, keyspaces=("thehive",), **kw):
    kw.setdefault("nodes", NODES)
    kw.setdefault("node_dcs", DCS)
    kw.setdefault("replications", {k: RF3 for k in keyspaces})
    return plan_reference(folder, list(keyspaces), **kw)


def test_root_host_and_date_folders_all_resolve(tmp_path):
    root = guide_tree(tmp_path / "archive_backup")
    dates, date, _ = resolve_dates(root)
    assert date == "2026-11-27" and sorted(dates) == ["n1", "n2", "n3"]
    assert list(resolve_dates(root / "n2")[0]) == ["n2"]
    assert list(resolve_dates(root / "n2" / date)[0]) == ["n2"]
    m = plan(root).manifest
    assert sorted(o.key for o in m.objects if o.table == "edgestore") == [
        f"{h}/2026-11-27/thehive/edgestore-{ID}.tbz" for h in ("n1", "n2", "n3")]
    assert {o.node for o in m.objects} == {"n1", "n2", "n3"}
    host = plan(root / "n1").manifest
    assert {o.key for o in host.objects} == {f"2026-11-27/thehive/{t}-{ID}.tbz"
                                             for t in ("edgestore", "graphindex")}
    day = plan(root / "n1" / "2026-11-27").manifest
    assert {o.key for o in day.objects} == {f"thehive/{t}-{ID}.tbz" for t in ("edgestore", "graphindex")}
    assert day.objects[0].raw_size and day.objects[0].files == 3


def test_the_newest_date_unless_one_is_named(tmp_path):
    root = guide_tree(tmp_path, date="2026-11-26")
    guide_tree(tmp_path, hosts=("n1", "n2"), date="2026-11-27")
    ref = plan(root)
    assert ref.manifest.backup_id == "reference-2026-11-27"
    assert {o.node for o in ref.manifest.objects} == {"n1", "n2"}
    assert any("n3 has no 2026-11-27 folder" in n for n in ref.notes)
    older = plan(root, date="2026-11-26")
    assert older.manifest.backup_id == "reference-2026-11-26"
    assert {o.node for o in older.manifest.objects} == {"n1", "n2", "n3"}
    missing = plan(root, date="2026-01-01")
    assert missing.manifest is None and "no host has a date folder '2026-01-01'" in missing.problems[0]


def test_empty_archives_and_system_keyspaces_are_skipped_with_a_line_each(tmp_path):
    root = guide_tree(tmp_path)
    ref = plan(root)
    assert ref.problems == []
    assert {o.keyspace for o in ref.manifest.objects} == {"thehive"}
    assert {o.table for o in ref.manifest.objects} == {"edgestore", "graphindex"}
    empty = [n for n in ref.notes if n.startswith("skipped empty archive")]
    assert len(empty) == 3 and all(f"thehive/edgestore-{'0' * 32}.tbz (14 bytes" in n for n in empty)
    assert any(n.startswith("skipped system keyspace system (6 archives from 3 host(s))")
               for n in ref.notes)
    assert any(n.startswith("skipped system keyspace system_auth") for n in ref.notes)
    schema = ref.manifest.cassandra["keyspaces"]["thehive"]["schema_cql"]
    assert schema.count("CREATE TABLE") == 2  # one per table, not one per host
    assert inspect_archive(root / "n1" / "2026-11-27" / "system" / f"_paxos_repair_state-{ID}.tbz").state == "empty"


def test_only_the_keyspaces_asked_for_are_read(tmp_path):
    root = guide_tree(tmp_path)
    guide_tree(tmp_path, keyspace="cortex", tables=("jobs",))
    (root / "n1" / "2026-11-27" / "cortex" / f"jobs-{ID}.tbz").write_bytes(b"garbage")
    ref = plan(root)
    assert ref.problems == [] and {o.keyspace for o in ref.manifest.objects} == {"thehive"}
    assert any(n.startswith("skipped keyspace cortex (6 archives from 3 host(s)): not asked for")
               for n in ref.notes)
    cortex = plan(root, keyspaces=("cortex",))
    assert cortex.manifest is None
    assert cortex.problems == [f"archive n1/2026-11-27/cortex/jobs-{ID}.tbz is damaged: corrupt, or "
                               "not a bzip2 tar (Invalid data stream)"]
    assert "system keyspace" in plan(root, keyspaces=("system_auth",)).problems[0]
    assert "no archive of keyspace nope" in plan(root, keyspaces=("nope",)).problems[0]


@pytest.mark.parametrize("damage, reason", [
    ("truncated", "truncated"), ("zero", "0 bytes"), ("not-bzip2", "not a bzip2 tar"),
    ("hostile", "unsafe archive")])
def test_a_damaged_archive_the_restore_needs_is_refused_by_name(tmp_path, damage, reason):
    root = guide_tree(tmp_path)
    target = root / "n2" / "2026-11-27" / "thehive" / f"graphindex-{ID}.tbz"
    data = target.read_bytes()
    if damage == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "zero":
        target.write_bytes(b"")
    elif damage == "not-bzip2":
        target.write_bytes(b"PK\x03\x04 a zip file")
    else:
        write_archive(target, {"../../etc/thb-pwned": b"x"})
    ref = plan(root)
    assert ref.manifest is None
    (problem,) = ref.problems
    assert problem.startswith(f"archive n2/2026-11-27/thehive/graphindex-{ID}.tbz is damaged: ")
    assert reason in problem


def test_host_folders_match_node_names_addresses_and_hostnames():
    matched, problems = match_hosts(["n1", "10.0.0.2", "N3.example.org", "other"], NODES)
    assert matched == {"n1": "n1", "10.0.0.2": "n2", "N3.example.org": "n3"} and problems == []
    _, problems = match_hosts(["n1", "n1.example.org"], NODES)
    assert problems == ["host folders n1, n1.example.org all match node n1: keep one"]
    _, problems = match_hosts(["cass.a"], {"cass.a.x": "10.0.0.1", "cass.b": "10.0.0.2"})
    assert problems == ["host folder cass.a fits several nodes (cass.a.x, cass.b)"]
    assert match_hosts(["10.0.0.9"], {"10": "10.0.0.1"})[0] == {}  # an address has no DNS label


def test_coverage_fewer_than_rf_hosts_missing():
    all_ = {"t": {"n1", "n2", "n3"}}
    one = {"t": {"n1"}}
    two = {"t": {"n1", "n2"}}
    assert missing_hosts(one, DCS, RF3) == {}
    assert missing_hosts(two, DCS, {"class": "SimpleStrategy", "replication_factor": 2}) == {}
    assert missing_hosts(one, DCS, {"class": "SimpleStrategy", "replication_factor": 2}) == {"t": {"n2", "n3"}}
    assert missing_hosts(two, DCS, RF1) == {"t": {"n3"}}
    assert missing_hosts(all_, DCS, RF1) == {}
    # 4.x auto-expansion and transient replicas ('3/1': two full copies)
    assert missing_hosts(one, DCS, {"class": "NetworkTopologyStrategy", "replication_factor": 3}) == {}
    assert missing_hosts(one, DCS, {"class": "NetworkTopologyStrategy", "dc1": "3/1"}) == {"t": {"n2", "n3"}}
    assert missing_hosts(two, DCS, {"class": "NetworkTopologyStrategy", "dc1": "3/1"}) == {}
    # RF above the node count: every node holds every row
    assert missing_hosts(one, {"n1": "dc1", "n2": "dc1"}, {"class": "SimpleStrategy",
                                                          "replication_factor": 3}) == {}
    # an unknown strategy proves nothing: every host is needed
    assert missing_hosts(two, DCS, {"class": "EverywhereStrategy"}) == {"t": {"n3"}}


def test_coverage_per_data_center():
    dcs = {"a1": "dc1", "a2": "dc1", "b1": "dc2", "b2": "dc2"}
    nts = {"class": "NetworkTopologyStrategy", "dc1": 2, "dc2": 1}
    assert missing_hosts({"t": {"b1", "b2"}}, dcs, nts) == {}  # dc2 holds every row
    assert missing_hosts({"t": {"a1"}}, dcs, nts) == {}  # dc1: one of two copies missing
    assert missing_hosts({"t": {"b1"}}, dcs, nts) == {"t": {"a1", "a2", "b2"}}
    assert missing_hosts({"t": {"a1", "a2"}}, dcs, {"class": "NetworkTopologyStrategy", "dc2": 2}) \
        == {"t": {"b1", "b2"}}  # dc1 holds no replica of this keyspace
    # a missing node whose data center is unknown counts as missing everywhere
    assert missing_hosts({"t": {"a1"}}, dict(dcs, x=None), nts) == {"t": {"a2", "b1", "b2", "x"}}


def test_rf1_backup_with_a_host_missing_is_refused_unless_partial(tmp_path):
    root = guide_tree(tmp_path, hosts=("n1", "n2"))
    ref = plan(root, replications={"thehive": RF1})
    assert ref.manifest is None
    (problem,) = ref.problems
    assert problem.startswith("keyspace thehive (replication class: SimpleStrategy, "
                              "replication_factor: 1): no archives from host(s) n3, so rows")
    assert "allow_partial=True" in problem
    partial = plan(root, replications={"thehive": RF1}, allow_partial=True)
    assert partial.problems == [] and len(partial.manifest.objects) == 4
    assert any(n.startswith("PARTIAL restore (allow_partial=True): keyspace thehive") for n in partial.notes)
    covered = plan(root)  # RF 3: one host missing still leaves two copies of every row
    assert covered.problems == []
    assert any("every row has a copy in the archives (no archives from n3)" in n for n in covered.notes)


def test_a_host_without_one_tables_archive_is_missing_for_that_table(tmp_path):
    root = guide_tree(tmp_path)
    (root / "n3" / "2026-11-27" / "thehive" / f"graphindex-{ID}.tbz").write_bytes(bz2.compress(b""))
    ref = plan(root, replications={"thehive": RF1})
    assert ref.problems == [
        "keyspace thehive (replication class: SimpleStrategy, replication_factor: 1): no archives "
        "from host(s) n3 for tables graphindex, so rows kept only there are not in this backup. "
        "Add those hosts' folders (named as the node: its name, address or hostname), or pass "
        "allow_partial=True to restore only what is there"]


def test_unmatched_host_folders_count_for_no_node(tmp_path):
    root = guide_tree(tmp_path, hosts=("n1", "n2", "stranger"))
    ref = plan(root, replications={"thehive": RF1})
    assert "no archives from host(s) n3" in ref.problems[0]
    assert any(n.startswith("host folder stranger matches no Cassandra node") for n in ref.notes)
    by_address = guide_tree(tmp_path / "b", hosts=("10.0.0.1", "n2.example.org", "n3"))
    ref = plan(by_address, replications={"thehive": RF1})
    assert ref.problems == [] and "host folder 10.0.0.1 → node n1" in ref.notes


def test_reference_manifest_without_coverage_keeps_every_user_keyspace(tmp_path):
    root = guide_tree(tmp_path)
    guide_tree(tmp_path, keyspace="cortex", tables=("jobs",))
    m = reference_manifest(root / "n1" / "2026-11-27")
    assert sorted(m.cassandra["keyspaces"]) == ["cortex", "thehive"]
    with pytest.raises(ValueError, match="no archive of keyspace nope"):
        reference_manifest(root, ["nope"])
