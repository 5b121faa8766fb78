"""Paths the user typed (ckpt=, out_dir=, image=, resume=, dataset.root, logger.tensorboard.log_dir,
hydra.run.dir and hydra.sweep.dir, $XDG_CACHE_HOME).

`~` and `~user` are expanded as a shell expands them, and a `~name` of no such user is left as typed, as a
shell leaves it: pathlib's `expanduser` raises RuntimeError there instead, which reached the user as a
traceback. A relative path means what it meant in the shell that started the command, also once Hydra has
moved the job into its run directory (`hydra.job.chdir=true`). A path handed back to Hydra (a command that
fmnist prints or runs for the user) is written in Hydra's override grammar, quoted where it must be."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any


def user_path(text: str | os.PathLike[str]) -> Path:
    path = Path(os.path.expanduser(text))
    start = _moved_from()
    return path if start is None or path.is_absolute() else start / path


def _moved_from() -> Path | None:
    """The directory the command started in, where Hydra has since changed the working directory."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    start = Path(HydraConfig.get().runtime.cwd)
    return None if start == Path.cwd() else start


def sweep_dir(hydra: Any) -> Path:
    """The directory a sweep's launcher made (`hydra.sweep.dir`: where relative, from where the command
    started), also from inside a job that Hydra has moved into its own directory (hydra.job.chdir=true)."""
    return Path(hydra.runtime.cwd, hydra.sweep.dir)


def quoted_override(key: str, value: str) -> str:
    """`key=value` in Hydra's override grammar, whatever characters the value holds (a path with spaces,
    commas or quotes): quoted unless it is a plain path (with a slash, so never a number, a bool or null).
    Inside quotes Hydra reads backslashes as they are, but those before a quote or the closing quote in pairs."""
    if "/" in value and re.fullmatch(r"[\w./+@%:-]+", value, re.ASCII):
        return f"{key}={value}"
    escaped = re.sub(r"(\\*)'", r"\1\1\\'", value)
    return f"{key}='" + re.sub(r"(\\+)$", r"\1\1", escaped) + "'"
