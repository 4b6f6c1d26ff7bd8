"""The alternatives benchmarks/compare.py measures side by side, on one harness cluster.

Each method measures one step and returns a row: {"what", "seconds", "cpu", "bytes", "rss", ...}.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks._measure import Meter, Step, run_child
from benchmarks.throughput import KEYSPACE, du_bytes

MEDUSA_VERSION = "0.31.0"
DEFAULTS = "hot_backup, incremental storage"
ARCHIVE_FULL = "hot_backup, archive storage, full"
NODE_BY_NODE = "hot_backup, archive storage, one node after another"
_TAR_FLAG = {"zstd": "--zstd", "gzip": "-z", "bzip2": "-j", "none": ""}


def row(what: str, step: Step, seconds: float | None = None, nbytes: int | None = None, **extra) -> dict:
    return {"what": what, "seconds": step.wall if seconds is None else seconds, "wall": step.wall,
            "cpu": step.cpu, "bytes": nbytes, "rss": step.peak_rss_mib or None, **step.extra, **extra}


def sstable_files(cluster) -> dict[str, int]:
    """Live SSTable component files of the keyspace on every node (snapshots left out): path -> size."""
    out = {}
    for node in cluster.nodes:
        for f in (node.data_dir / KEYSPACE).glob("*/*"):
            if f.is_file():
                out[str(f)] = f.stat().st_size
    return out


class Bench:
    """The harness cluster, its sshd and Prefect server, and a work folder for what is stored."""

    def __init__(self, real_stack, cluster, work: Path, args, api_url: str):
        self.stack, self.cluster, self.work, self.args = real_stack, cluster, work, args
        self.sshd = real_stack.sshd
        self.meter = Meter([self.sshd.service.dir / "pid", *(n.service.dir / "pid" for n in cluster.nodes)])
        self.api_url = api_url
        self.medusa_error: str | None = None
        self.work.mkdir(parents=True, exist_ok=True)

    # -- helpers -------------------------------------------------------------------------------
    def ssh(self, node, remote: str) -> list[str]:
        return ["ssh", "-p", str(self.sshd.port), "-i", str(self.sshd.client_key), "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={self.sshd.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", f"{self.sshd.user}@{node.address}", remote]

    def checked(self, argv: list[str], step: Step, **kw) -> None:
        rc, err = run_child(argv, step, **kw)
        if rc != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed (rc={rc}): {err[-2000:]}")

    def on_each_node(self, fn) -> list:
        with ThreadPoolExecutor(len(self.cluster.nodes)) as pool:
            return list(pool.map(fn, self.cluster.nodes))

    def stack_file(self, name: str, *, storage: str, node: str | None = None) -> tuple[Path, Path]:
        """A stack file of the cluster, or of its one ``node`` (the others stay up, unnamed)."""
        repo = self.stack.repository("local", name)
        data = self.stack.stack_data(self.cluster, repo, name=name, with_elasticsearch=False,
                                     with_thehive=False)
        data["cassandra"]["storage"] = storage  # named, whatever the default is
        if node is not None:
            data["nodes"] = [n for n in data["nodes"] if n["name"] == node or "cassandra" not in n["roles"]]
            data["cassandra"]["nodes"] = {node: data["cassandra"]["nodes"][node]}
            for service in data["services"]:
                service["nodes"] = [n for n in service["nodes"] if n == node or service["name"] != "cassandra"]
        path = self.stack.write_stack_file(self.stack.root / "stacks" / f"{name}.yaml", data)
        return path, Path(repo["path"])

    def flow(self, name: str, step: Step, **kwargs) -> tuple[dict, float]:
        """Run one flow in a child process; returns (its result, seconds of the flow call)."""
        with tempfile.NamedTemporaryFile(suffix=".json", dir=self.work, delete=False) as f:
            out = f.name
        try:
            argv = [sys.executable, "-m", "benchmarks._flowchild", out, name, json.dumps(kwargs)]
            env = {**os.environ, "PREFECT_API_URL": self.api_url,  # the stack file's password env too
                   "PREFECT_LOGGING_LEVEL": self.args.log_level}
            self.checked(argv, step, env=env)
            data = json.loads(Path(out).read_text())
        finally:
            Path(out).unlink(missing_ok=True)
        step.extra.setdefault("timelines", []).append(data.get("timeline"))
        return data["result"], data["seconds"]

    # -- 1. raw copy ---------------------------------------------------------------------------
    def raw_copy(self, rep: int) -> dict:
        tag, dest = f"bench-raw-{rep}", self.work / f"raw-{rep}"
        dest.mkdir()

        def one(node) -> None:
            nt = shlex.quote(str(node.nodetool))
            self.checked(self.ssh(node, f"{nt} snapshot -t {tag} {KEYSPACE}"), s)
            with open(dest / f"{node.name}.tar", "wb") as out:
                self.checked(self.ssh(node, f"cd {shlex.quote(str(node.data_dir))} && "
                                            f"tar cf - {KEYSPACE}/*/snapshots/{tag}"), s, stdout=out)
            self.checked(self.ssh(node, f"{nt} clearsnapshot -t {tag}"), s)

        with self.meter.step() as s:
            self.on_each_node(one)
        nbytes = du_bytes(dest)
        shutil.rmtree(dest)
        return row("raw copy: nodetool snapshot + ssh tar cf - + clearsnapshot", s, nbytes=nbytes)

    # -- 2. the reference guide ----------------------------------------------------------------
    def guide(self, rep: int) -> dict:
        from tests.stack.guide import run_guide_backup

        date, node_side, dest = f"bench-{rep}", self.work / f"guide-node-{rep}", self.work / f"guide-{rep}"
        dest.mkdir()
        with self.meter.step() as s:
            run_guide_backup(self.cluster, node_side, date)  # tar cjf per table, on each node at once

            def copy(node) -> None:
                self.checked(["scp", "-q", "-r", "-P", str(self.sshd.port), "-i", str(self.sshd.client_key),
                              "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.sshd.known_hosts}",
                              f"{self.sshd.user}@{node.address}:{node_side / node.name / date}",
                              str(dest / node.name)], s)

            self.on_each_node(copy)
        nbytes = du_bytes(dest)
        shutil.rmtree(dest)
        shutil.rmtree(node_side)
        return row("the guide: tar cjf per table on the node, then scp -r (every keyspace)", s,
                   nbytes=nbytes)

    # -- 3. our hot_backup, archive storage (the default; what the restores below compare on) ----
    def ours_full(self, rep: int) -> dict:
        path, repo = self.stack_file(f"archive-{rep}", storage="archive")
        with self.meter.step() as s:
            result, seconds = self.flow("hot_backup", s, stack=str(path), components=["cassandra"],
                                        label=f"bench archive {rep}")
        return row(ARCHIVE_FULL, s, seconds, du_bytes(repo),
                   backup_id=result["backup_id"], stack=str(path), repository=str(repo))

    def ours_node_by_node(self, rep: int) -> dict:
        """The same full backup (archive storage), one node after another: a stack file per node."""
        seconds, cpu, stored, rss = 0.0, 0.0, 0, 0.0
        for node in self.cluster.nodes:
            path, repo = self.stack_file(f"one-node-{rep}-{node.name}", storage="archive", node=node.name)
            with self.meter.step() as s:
                _, took = self.flow("hot_backup", s, stack=str(path), components=["cassandra"],
                                    label=f"bench one node {rep}")
            seconds, cpu, stored = seconds + took, cpu + s.cpu, stored + du_bytes(repo)
            rss = max(rss, s.peak_rss_mib or 0)
            shutil.rmtree(repo, ignore_errors=True)
        return {"what": NODE_BY_NODE, "seconds": seconds, "wall": seconds, "cpu": cpu, "bytes": stored,
                "rss": rss or None}

    # -- 4. our hot_backup, incremental storage -------------------------------------------------
    def ours_incremental(self, rep: int) -> list[dict]:
        from tests.stack.fastseed import fast_seed

        path, repo = self.stack_file(f"incremental-{rep}", storage="incremental")
        rows = []
        first_bytes = 0
        for what in ("full", "no change", "after 1 % new rows"):
            extra: dict = {}
            if what == "after 1 % new rows":
                before = sstable_files(self.cluster)
                fast_seed(self.cluster, KEYSPACE, size_mb=self.args.size_mb / 100,
                          seed=self.args.seed + 1000 + rep)
                after = sstable_files(self.cluster)
                extra["changed_bytes"] = sum(size for f, size in after.items() if f not in before)
            stored0 = du_bytes(repo) if repo.exists() else 0
            with self.meter.step() as s:
                _, seconds = self.flow("hot_backup", s, stack=str(path), components=["cassandra"],
                                       label=f"bench incremental {rep} {what}")
            added = du_bytes(repo) - stored0
            if what == "full":
                first_bytes = added
            extra["first_run_bytes"] = first_bytes
            rows.append(row(f"{DEFAULTS}, {what}", s, seconds, added, **extra))
        shutil.rmtree(repo, ignore_errors=True)
        return rows

    # -- 5. cassandra-medusa -------------------------------------------------------------------
    def medusa_bin(self) -> Path | None:
        """Medusa in its own venv (it pins exact versions); None, with the reason kept, if it fails."""
        if self.medusa_error is not None:
            return None
        venv = Path(self.args.medusa_venv)
        medusa = venv / "bin" / "medusa"
        if medusa.exists():
            return medusa
        for argv in (["python3", "-m", "venv", str(venv)],
                     [str(venv / "bin" / "pip"), "install", "-q", f"cassandra-medusa=={MEDUSA_VERSION}"]):
            r = subprocess.run(argv, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                self.medusa_error = f"`{shlex.join(argv)}` failed (rc={r.returncode}): {r.stderr[-1500:]}"
                return None
        return medusa

    def medusa_ini(self, node, base: Path) -> Path:
        c = self.cluster
        text = f"""[cassandra]
config_file = {node.yaml}
cql_username = {c.username}
cql_password = {c.password}
nodetool_executable = {node.nodetool}
nodetool_flags =
resolve_ip_addresses = False
use_sudo = False
check_running = {node.nodetool} version

[storage]
storage_provider = local
base_path = {base}
bucket_name = medusa
fqdn = {node.address}
concurrent_transfers = 2

[monitoring]
monitoring_provider = None

[grpc]
enabled = False

[kubernetes]
enabled = False

[logging]
enabled = 0
"""
        path = self.work / f"medusa-{node.name}.ini"
        path.write_text(text)
        path.chmod(0o600)  # holds the CQL password
        return path

    def medusa(self, rep: int) -> list[dict]:
        """Full, a first differential (copies everything again), and a differential after it."""
        medusa = self.medusa_bin()
        if medusa is None:
            return []
        base = self.work / f"medusa-{rep}"
        base.mkdir()
        inis = {n.name: self.medusa_ini(n, base) for n in self.cluster.nodes}
        rows = []
        try:
            for i, mode in enumerate(("full", "differential", "differential")):
                name = f"bench-{rep}-{i}-{mode}"
                stored0 = du_bytes(base)
                with self.meter.step() as s:
                    def one(node, name=name, mode=mode, s=s) -> None:
                        argv = [str(medusa), "--config-file", str(inis[node.name]), "backup",
                                "--backup-name", name, "--mode", mode]
                        rc, err = run_child(argv, s)
                        if rc != 0:
                            raise RuntimeError(f"`{shlex.join(argv)}` failed (rc={rc}): {err[-3000:]}")

                    self.on_each_node(one)
                what = {0: "full", 1: "first differential", 2: "differential after a differential"}[i]
                rows.append(row(f"cassandra-medusa {MEDUSA_VERSION}, {what}", s,
                                nbytes=du_bytes(base) - stored0))
        except RuntimeError as exc:
            self.medusa_error = str(exc)
            return []
        finally:
            shutil.rmtree(base, ignore_errors=True)
            for node in self.cluster.nodes:  # what a failed run may leave
                subprocess.run([str(node.nodetool), "clearsnapshot", "--all"], capture_output=True, check=False)
        return rows

    # -- 6. restore: ours vs by hand -----------------------------------------------------------
    def restore_ours(self, full: dict) -> dict:
        with self.meter.step() as s:
            result, seconds = self.flow("restore", s, stack=full["stack"], backup_id=full["backup_id"],
                                        components=["cassandra"], confirm=True)
        self.clear_snapshots()
        return row("restore: flows.restore.restore (confirm=True)", s, seconds)

    def restore_by_hand(self, full: dict) -> dict:
        """What an operator does with our per-table archives: untar each on its node (streamed over
        SSH), drop and re-create the keyspace from its schema, nodetool import each table."""
        from config import load_stack
        from tasks.manifest import read_manifest
        from tasks.repositories import open_repository

        with open_repository(load_stack(Path(full["stack"]))) as repo:
            manifest = read_manifest(repo, full["backup_id"])
        objects = [o for o in manifest.objects if o.component == "cassandra" and o.table]
        repo_path = Path(full["repository"])
        by_name = {n.name: n for n in self.cluster.nodes}
        session = self.cluster.session()
        try:
            schema = session.cluster.metadata.keyspaces[KEYSPACE].export_as_string()
            with self.meter.step() as s:
                def untar(node) -> None:
                    for o in (o for o in objects if o.node == node.name):
                        target = shlex.quote(str(node.home / "hand-restore" / o.table))
                        with open(repo_path / o.key, "rb") as archive:
                            self.checked(self.ssh(node, f"mkdir -p {target} && tar x {_TAR_FLAG[o.compression]} "
                                                        f"-f - -C {target}"), s, stdin=archive)

                self.on_each_node(untar)
                session.execute(f"DROP KEYSPACE {KEYSPACE}")
                for statement in schema.split(";\n"):
                    if statement.strip():
                        session.execute(statement)

                def load(node) -> None:
                    nt = shlex.quote(str(node.nodetool))
                    for o in (o for o in objects if o.node == node.name):
                        target = shlex.quote(str(node.home / "hand-restore" / o.table))
                        self.checked(self.ssh(node, f"{nt} import {KEYSPACE} {o.table} {target}"), s)

                self.on_each_node(load)
        finally:
            session.cluster.shutdown()
            self.cluster._drivers.remove(session.cluster)
            for name in by_name:
                shutil.rmtree(by_name[name].home / "hand-restore", ignore_errors=True)
        self.clear_snapshots()
        return row("restore by hand: ssh tar x per table + drop/create + nodetool import", s)

    def clear_snapshots(self) -> None:
        """A drop leaves a dropped-* snapshot (auto_snapshot): not for the next step."""
        for node in self.cluster.nodes:
            self.cluster.nodetool(node, "clearsnapshot", "--all")
