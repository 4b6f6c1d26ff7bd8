"""Hash every entry of some folders: content, link target, owner, mode (the folder's own too).

Run as a script (a stack hook, so that a flow can record the folders at one exact step):
``python tests/stack/treehash.py OUT.json PATH...`` writes ``{path: tree}``; a missing folder is
recorded as ``None``. Kept free of project imports so that it runs anywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import sys


def tree(root: str) -> dict[str, list] | None:
    if not os.path.lexists(root):
        return None
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in [""] + sorted(dirs) + sorted(files):
            p = os.path.join(folder, name) if name else folder
            if name == "" and folder != root:
                continue
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    what = hashlib.file_digest(f, "sha256").hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(p)
            else:
                what = stat.filemode(st.st_mode)[0]
            out[os.path.relpath(p, root)] = [what, oct(st.st_mode & 0o7777), st.st_uid, st.st_gid]
    return out


def trees(paths: list[str]) -> dict[str, dict | None]:
    return {p: tree(p) for p in paths}


if __name__ == "__main__":
    out, *paths = sys.argv[1:]
    with open(out + ".tmp", "w") as f:
        json.dump(trees(paths), f)
    os.replace(out + ".tmp", out)
