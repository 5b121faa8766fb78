"""Replacing a file so that readers, and a crash at any instant, see the old file or the new one.

Every file a run leaves (checkpoints, metrics, figures, sweep summaries) is written through here, so a
failed write (disk full, a directory in the way, no permission) is reported the same way everywhere: one
line naming the path and the reason, and the previous version of the file left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from fmnist.errors import UserError

# Below this much free space after a failed write, the failure is taken to be a full disk: torch.save
# reports one as a RuntimeError without an errno.
_NEARLY_FULL = 1 << 20
# How torch.save's stream writer words a failed write (it raises RuntimeError, not OSError).
_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed")


def write_atomically(path: Path, write: Callable[[Path], object], *, durable: bool = False) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`.

    durable=True also fsyncs the file before the rename and the directory after it, so the new file
    survives a power loss too (checkpoints). On any error the temporary file is removed and `path` is
    untouched; an OSError, or a RuntimeError from torch.save, becomes a UserError naming the path.
    """
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # the suffix tells writers the format
    try:
        write(tmp)
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent, os.O_RDONLY)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not any(w in str(exc) for w in _TORCH_WRITE_FAILURES):
            tmp.unlink(missing_ok=True)
            raise  # not an I/O failure: a bug, keep its traceback
        reason = _reason(exc, path)
        # the failed writer's frames hold its file open, so a full disk would stay full of the deleted file
        # for as long as the error lives (through every record of the failure that follows)
        chained: BaseException | None = exc
        while chained is not None:  # torch.save's first error, then its writer's when it closes
            traceback.clear_frames(chained.__traceback__)
            chained = chained.__context__
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path}: {reason}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_dir(path: Path) -> Path:
    """mkdir -p, with a one-line error when something is in the way or the disk refuses."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # the path itself, or one of its parents, is a file
        raise in_the_way(path) from None
    except OSError as exc:
        raise UserError(f"cannot create directory {path}: {exc.strerror or exc}") from None
    return path


@contextlib.contextmanager
def taking_turns(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` (created if need be, with its directory): the processes that
    write the same files (parallel sweep jobs, the ranks of a run, two commands) wait for each other here.
    The lock goes with the file's closing, also when the process holding it dies. A holder may remove the file
    (and its directory) as it leaves: whoever waited on that file takes its turn again on the one now at the
    path, which a process arriving meanwhile may hold. Where the file system has no locks (some NFS mounts:
    ENOLCK), the writers go on without taking turns."""
    while True:
        ensure_dir(lock.parent)
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # never truncated
        except OSError as exc:
            raise UserError(f"could not write {lock}: {_reason(exc, lock)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            break  # no locks here
        if _still_at(fd, lock):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


def _still_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the one at `path` (not removed, not replaced)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino)


def absent_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first: what creating it would make, for
    remove_empty to take away again where the work that made them comes to nothing."""
    absent = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        absent.append(folder)
    return absent


def remove_empty(dirs: list[Path]) -> None:
    """Remove the folders of absent_dirs, deepest first, up to the first one that is not empty (or cannot go)."""
    with contextlib.suppress(OSError):
        for folder in dirs:
            folder.rmdir()


def check_dir_target(path: Path) -> Path:
    """ensure_dir's error for a file in the way (at `path` or at its nearest existing ancestor), without
    creating anything: asked before the work whose results go there."""
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                raise in_the_way(path)
            break
    return path


def in_the_way(path: Path) -> UserError:
    """The one wording for a directory that cannot be made because a file holds its place (or a parent's)."""
    return UserError(f"cannot use {path} as a directory: a file is in the way")


def _reason(exc: BaseException, path: Path) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on device"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    try:
        if shutil.disk_usage(path.parent).free < _NEARLY_FULL:
            return "no space left on device"
    except OSError:
        pass
    return " ".join(str(exc).split())[:160]


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
