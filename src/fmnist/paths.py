"""Paths the user typed (ckpt=, out_dir=, image=, resume=, dataset.root, $XDG_CACHE_HOME).

`~` and `~user` are expanded as a shell expands them, and a `~name` of no such user is left as typed, as a
shell leaves it: pathlib's `expanduser` raises RuntimeError there instead, which reached the user as a
traceback."""

from __future__ import annotations

import os
from pathlib import Path


def user_path(text: str | os.PathLike[str]) -> Path:
    return Path(os.path.expanduser(text))
