"""The least-privilege user of the test stack: a real unprivileged account on this machine that
logs in to the stack's sshd with its own key, and the README's sudoers lines installed verbatim
(README.md, "A non-root SSH user"). The stack's data stays root's, in pytest's root-only folders,
so that the user can do nothing there without the prefix."""
from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from config import load_stack
from config.model import CommandManager, Stack
from tasks.services import expand

USER = "thbackup"
PREFIX = ["sudo", "-n"]
README = Path(__file__).resolve().parents[2] / "README.md"
SUDOERS_D = Path("/etc/sudoers.d")


def readme_sudoers() -> str:
    """The sudoers lines between the README's markers, as an operator copies them."""
    text = README.read_text()
    block = text.split("<!-- sudoers:begin -->", 1)[1].split("<!-- sudoers:end -->", 1)[0]
    return block.strip().removeprefix("```").removesuffix("```").strip() + "\n"


def ensure_user() -> None:
    """The account, made if missing (a fresh machine): a shell, no password, not locked (sshd
    without PAM refuses a ``!`` password)."""
    if subprocess.run(["id", "-u", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True, timeout=60)
    subprocess.run(["usermod", "-p", "*", USER], check=True, timeout=60)


def user_key(sshd, folder: Path) -> Path:
    """A key of the user's own, authorized for it alone on the stack's sshd."""
    key = folder / f"id_{USER}"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", USER, "-f", str(key)],
                       check=True, timeout=30)
    authorized = sshd.user_keys / USER
    authorized.write_text(Path(f"{key}.pub").read_text())
    authorized.chmod(0o644)
    return key


def service_commands(stack: Stack) -> list[str]:
    """What the stack runs through the prefix besides THB_FILES: the service scripts and the
    nodetool / sstableloader wrappers (the test stack's stand-ins for systemctl and nodetool)."""
    found: set[str] = set()
    for svc in stack.services:
        if isinstance(svc.manager, CommandManager):
            for node in svc.nodes:
                for action in ("start", "stop", "status"):
                    found.add(expand(getattr(svc.manager, action), node)[0])
    prefix = stack.ssh.privilege_prefix if stack.ssh else []
    for node in stack.nodes_with("cassandra"):
        settings = stack.cassandra.settings_for(node.name)
        for argv in (settings.nodetool, settings.sstableloader):
            found.add(argv[len(prefix)] if argv[:len(prefix)] == prefix else argv[0])
    return sorted(found)


@contextmanager
def sudoers(name: str, stack: Stack) -> Iterator[Path]:
    """The README's lines plus this stack's THB_SERVICES, as /etc/sudoers.d/<name>, checked by
    visudo; removed afterwards."""
    bad = [c for c in service_commands(stack) if not re.fullmatch(r"[A-Za-z0-9._/-]+", c)]
    assert not bad, f"paths sudoers would need escaped: {bad}"
    text = f"Cmnd_Alias THB_SERVICES = {', '.join(service_commands(stack))}\n" + readme_sudoers()
    path = SUDOERS_D / re.sub(r"[^A-Za-z0-9_-]", "_", name)  # sudo skips names with a dot
    path.write_text(text)
    path.chmod(0o440)
    try:
        check = subprocess.run(["visudo", "-cf", str(path)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        yield path
    finally:
        path.unlink(missing_ok=True)


def as_user(source: Path, dest: Path, key: Path, prefix: list[str]) -> tuple[Path, Stack]:
    """The harness's stack file ``source`` with ``ssh.user`` the unprivileged user, its key, and
    ``prefix`` as the privilege prefix (before nodetool and sstableloader too, which live in
    root's folders here)."""
    data = yaml.safe_load(source.read_text())
    data["ssh"] = {**data["ssh"], "user": USER, "key_file": str(key), "privilege_prefix": prefix}
    for node in data["cassandra"]["nodes"].values():
        node["nodetool"] = [*prefix, *node["nodetool"]]
        node["sstableloader"] = [*prefix, *node["sstableloader"]]
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest, load_stack(dest)


@contextmanager
def others_shut_out(paths: list[Path]) -> Iterator[None]:
    """No access for "others" to ``paths`` (as in a packaged install, where /var/lib/cassandra is
    Cassandra's alone), their modes restored afterwards. The harness's folders are otherwise
    open to every user, because Elasticsearch runs as its own user among them."""
    modes = {p: p.stat().st_mode & 0o7777 for p in paths}
    try:
        for p, mode in modes.items():
            p.chmod(mode & ~0o007)
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def can_read(path: Path) -> bool:
    """Whether the user, without the prefix, can list ``path``."""
    return subprocess.run(["runuser", "-u", USER, "--", "ls", str(path)], capture_output=True,
                          timeout=30).returncode == 0
