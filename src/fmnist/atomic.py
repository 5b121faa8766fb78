"""Replacing a file so that readers, and a crash at any instant, see the old file or the new one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], object], *, durable: bool = False) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`.

    durable=True also fsyncs the file before the rename and the directory after it, so the new file
    survives a power loss too (checkpoints). On any error the temporary file is removed and the error
    propagates; `path` is untouched.
    """
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # the suffix tells writers the format
    try:
        write(tmp)
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent, os.O_RDONLY)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
