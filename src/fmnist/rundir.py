"""Who may write a run directory: one training process at a time, and never over another run by accident.

A run directory that already holds a run (a checkpoint or metrics) is refused unless the user asked to
resume it, so a repeated `hydra.run.dir=...` cannot silently replace best.pt. While a run trains, it holds
an exclusive lock on the directory, so a second process pointed at it (a resume started twice, two shells)
is refused instead of interleaving its checkpoints with the first one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from fmnist.atomic import ensure_dir
from fmnist.errors import UserError

LOCK_FILE = ".fmnist.lock"
RUN_FILES = ("last.pt", "best.pt", "metrics.json")


class RunDirectoryInUse(UserError):
    """The directory belongs to another run: nothing may be recorded in it on this run's behalf."""


def existing_run(out_dir: Path) -> str | None:
    """The first file that shows out_dir already holds a run, if any."""
    return next((name for name in RUN_FILES if (out_dir / name).is_file()), None)


@contextlib.contextmanager
def claim(out_dir: Path, *, resuming: bool) -> Iterator[Path]:
    """Hold out_dir for this process; refuse it if another process holds it, or if it holds a run that
    this one was not asked to resume."""
    ensure_dir(out_dir)
    try:
        fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot use run directory {out_dir}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RunDirectoryInUse(f"{out_dir} is in use by another fmnist-train (pid {holder}): wait for it to "
                                    f"finish, or choose another hydra.run.dir") from None
        found = existing_run(out_dir)
        if found and not resuming:
            raise RunDirectoryInUse(f"{out_dir} already holds a run ({found}): continue it with resume=auto, "
                                    f"or choose another hydra.run.dir")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield out_dir
    finally:
        os.close(fd)  # releases the lock
