"""TheHive's own settings touched by a restore: the one-shot index rebuild flag.

The guide asks operators to add ``db.janusgraph.forceDropAndRebuildIndex = true`` to
``application.conf`` for the first start after a restore, and to remember to remove it. We add it
with a marker, and remove exactly that line once TheHive is healthy.
"""
from __future__ import annotations

from config.model import Stack
from tasks.hosts import host_for

FLAG = "db.janusgraph.forceDropAndRebuildIndex = true"
MARKER = "# added by thehive-backup for one start; removed when TheHive is healthy"


def _conf(stack: Stack) -> tuple[str, str]:
    service = stack.service("thehive")
    if service is None or not service.config_file:
        raise ValueError("index_strategy 'rebuild' needs services[thehive].config_file "
                         "(the path of TheHive's application.conf)")
    return service.nodes[0], service.config_file


def _rewrite(stack: Stack, edit) -> None:
    node, path = _conf(stack)
    with host_for(stack, node) as host:
        text = host.run(host.privileged(["cat", "--", path]), timeout=60).text
        new = edit(text)
        if new != text:
            # Same folder, then rename: TheHive never reads a half-written file.
            host.stream_to(host.privileged(["sh", "-c", 'cat > "$1.thb-tmp" && chmod --reference="$1" "$1.thb-tmp" '
                                        '&& mv -f "$1.thb-tmp" "$1"', "sh", path]), [new.encode()], timeout=60)


def set_rebuild_flag(stack: Stack) -> None:
    _rewrite(stack, lambda t: t if MARKER in t else f"{t.rstrip()}\n{MARKER}\n{FLAG}\n")


def clear_rebuild_flag(stack: Stack) -> None:
    def drop(text: str) -> str:
        lines = text.splitlines()
        out = []
        skip = False
        for line in lines:
            if line == MARKER:
                skip = True
                continue
            if skip and line == FLAG:
                skip = False
                continue
            skip = False
            out.append(line)
        return "\n".join(out) + "\n"

    _rewrite(stack, drop)
