"""Each node behind a link of its own (``--link-mbit``): the wire a backup crosses in production.

On loopback the "wire" is as fast as the CPUs, so a raw ``ssh tar`` copy and our backup are both
CPU-bound and their ratio says how much CPU each spends per byte. A real node sends its SSTables
over a network card. Here every SSH packet from or to a node's address and the harness's sshd port
goes through an HTB class of that rate, one per node and direction (a full-duplex card of its own);
all other loopback traffic (CQL, Cassandra's gossip, Prefect) goes through a class as fast as the
machine. Only sch_htb and cls_u32 are needed; the root qdisc of ``lo`` is put back at the end.
"""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

DEVICE = "lo"


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True)


def link_commands(addresses: list[str], port: int, mbit: int) -> list[list[str]]:
    """The ``tc`` commands, in order: an HTB root whose default class is unlimited, and for each
    node address a class of ``mbit`` for what it sends and one for what it receives on ``port``."""
    cmds = [["qdisc", "add", "dev", DEVICE, "root", "handle", "1:", "htb", "default", "1", "r2q", "1000"],
            ["class", "add", "dev", DEVICE, "parent", "1:", "classid", "1:1", "htb", "rate", "100gbit"]]
    for i, address in enumerate(addresses):
        for j, (peer, peer_port) in enumerate((("src", "sport"), ("dst", "dport"))):
            classid = f"1:{10 + 2 * i + j}"
            cmds += [["class", "add", "dev", DEVICE, "parent", "1:", "classid", classid, "htb",
                      "rate", f"{mbit}mbit", "ceil", f"{mbit}mbit"],
                     ["filter", "add", "dev", DEVICE, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                      "match", "ip", peer, f"{address}/32", "match", "ip", peer_port, str(port), "0xffff",
                      "flowid", classid]]
    return cmds


@contextmanager
def shaped_links(addresses: list[str], port: int, mbit: int | None) -> Iterator[None]:
    """Shape each node's SSH traffic to ``mbit`` while inside (nothing when ``mbit`` is None)."""
    if mbit is None:
        yield
        return
    shown = subprocess.run(["tc", "qdisc", "show", "dev", DEVICE], check=True, capture_output=True, text=True).stdout
    if "htb" in shown or "tbf" in shown:
        raise RuntimeError(f"{DEVICE} is shaped already ({shown.strip()}): another benchmark runs?")
    try:
        for cmd in link_commands(addresses, port, mbit):
            _tc(*cmd)
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", DEVICE, "root"], capture_output=True)
