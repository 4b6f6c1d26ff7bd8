"""The flows as an unprivileged SSH user (README, "A non-root SSH user"): the README's sudoers
lines and ``ssh.privilege_prefix: [sudo, -n]``, on the real stack whose data is root's. Without
the prefix the same user is refused; with it, hot backup, verify, restore and a cold cycle pass."""
from __future__ import annotations

import shutil

import pytest

from flows import lifecycle
from flows.cold_backup import cold_backup
from flows.cold_restore import cold_restore
from flows.hot_backup import hot_backup
from flows.restore import restore
from flows.verify import verify_backup
from tasks.catalog import catalog
from tasks.repositories import open_repository
from tests.stack import least_privilege as lp
from tests.stack import seed
from tests.stack.cold import cold_stack, ensure_running, fingerprints, unhealthy

pytestmark = [pytest.mark.usefixtures("prefect_server", "seeded3", "standin3"), pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def user_key(real_stack, cluster3, tmp_path_factory):
    """The user and its key; Cassandra's nodes, the attachments and Elasticsearch's folders shut
    to it meanwhile."""
    lp.ensure_user()
    es = real_stack.elasticsearch
    shut = [*(n.home for n in cluster3.nodes), real_stack.files_dir, es.service.dir / "data", es.repo_dir]
    with lp.others_shut_out(shut):
        yield lp.user_key(real_stack.sshd, tmp_path_factory.mktemp("thbackup"))


def test_without_the_prefix_the_user_is_refused(real_stack, cluster3, make_stack, user_key, tmp_path):
    # realistic: the data is not the user's
    assert not lp.can_read(cluster3.nodes[0].data_dir) and not lp.can_read(real_stack.files_dir)
    root_path, _ = make_stack("local")
    path, stack = lp.as_user(root_path, tmp_path / "no-prefix.yaml", user_key, [])
    with lp.sudoers(f"thb-test-{real_stack.layout.net}", stack), pytest.raises(Exception) as refused:
        hot_backup(stack=str(path), components=["cassandra"])
    assert "Permission denied" in str(refused.value), refused.value
    with open_repository(stack) as repo:
        assert [r for r in catalog(repo) if r["status"] == "complete"] == []


def test_hot_backup_verify_restore_as_the_user(real_stack, cluster3, seeded3, make_stack, user_key, tmp_path):
    root_path, _ = make_stack("local")
    path, stack = lp.as_user(root_path, tmp_path / "thbackup.yaml", user_key, lp.PREFIX)
    rows = seed.cluster_fingerprint(cluster3)
    files = seed.files_fingerprint(real_stack.files_dir)
    with lp.sudoers(f"thb-test-{real_stack.layout.net}", stack):
        bid = hot_backup(stack=str(path))["backup_id"]
        assert verify_backup(stack=str(path), backup_id=bid)["ok"]
        restore(stack=str(path), backup_id=bid, components=["cassandra"], target_keyspace="thehive_lp",
                confirm=True)  # staged as root, chowned, taken by nodetool import
        (real_stack.files_dir / next(iter(seeded3["files"]))).unlink()
        restore(stack=str(path), backup_id=bid, components=["files"], confirm=True)
    try:
        assert seed.cluster_fingerprint(cluster3, "thehive_lp") == rows
        assert seed.cluster_fingerprint(cluster3) == rows  # the live one untouched
        assert seed.files_fingerprint(real_stack.files_dir) == files
    finally:
        session = cluster3.session()
        session.execute("DROP KEYSPACE IF EXISTS thehive_lp")
        session.cluster.shutdown()


def test_cold_backup_and_cold_restore_as_the_user(real_stack, cluster3, user_key, tmp_path):
    root_path, root_stack = cold_stack(real_stack, cluster3, tmp_path)
    path, stack = lp.as_user(root_path, tmp_path / "cold-thbackup.yaml", user_key, lp.PREFIX)
    before = fingerprints(real_stack, cluster3)
    moved: dict = {}
    with lp.sudoers(f"thb-test-{real_stack.layout.net}", stack):
        try:
            bid = cold_backup(stack=str(path), label="least privilege")["backup_id"]
            lifecycle.stop_in_order(root_stack, [], plain=True)
            result = cold_restore(stack=str(path), backup_id=bid, wipe=True)  # every folder moved aside
            moved = result["moved_aside"]
        finally:
            ensure_running(root_stack)
    try:
        assert result["restart"] == "ok" and unhealthy(root_stack) == {}
        assert fingerprints(real_stack, cluster3) == before
        owners = {p.owner() for p in (real_stack.elasticsearch.service.dir / "data").rglob("*")}
        assert owners == {"elasticsearch"}  # chown through the prefix, as saved
    finally:
        for aside in moved.values():
            shutil.rmtree(aside, ignore_errors=True)
