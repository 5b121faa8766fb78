"""Paths the user typed (ckpt=, out_dir=, image=, resume=, dataset.root, logger.tensorboard.log_dir,
$XDG_CACHE_HOME).

`~` and `~user` are expanded as a shell expands them, and a `~name` of no such user is left as typed, as a
shell leaves it: pathlib's `expanduser` raises RuntimeError there instead, which reached the user as a
traceback. A relative path means what it meant in the shell that started the command, also once Hydra has
moved the job into its run directory (`hydra.job.chdir=true`)."""

from __future__ import annotations

import os
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
