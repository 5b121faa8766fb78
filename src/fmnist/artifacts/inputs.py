"""Files a user names (a checkpoint, an image), checked as far as their names and containers go.

Torch-free on purpose: fmnist-eval and fmnist-predict run these checks before they import torch (about
5 s on a 2-core CPU), so a mistyped path or a truncated download answers at once. The code that reads the
files runs the same checks again, for sweep jobs and for callers of the library.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from fmnist.artifacts.rundir import BEST, LAST
from fmnist.errors import UserError
from fmnist.paths import user_path

# The largest model fmnist ships (feedforward on CIFAR-10) with Adam's state is under 100 MB.
MAX_CHECKPOINT_BYTES = 2 << 30
MAX_PICKLE_BYTES = 64 << 20  # the pickled structure itself (tensors live in their own records)


def existing_file(path: str | Path, what: str, if_directory: str = "") -> Path:
    """`path` with ~ expanded, or why it cannot be read as a file (`what`: "image", "checkpoint"; `if_directory`:
    what to say after "is a directory")."""
    path = user_path(path)
    if not path.is_file():
        why = (f"is a directory{if_directory}" if path.is_dir() else "is not a regular file" if path.exists() else
               "does not exist")
        raise UserError(f"{what} {path} {why}")
    return path


def checkpoint_path(setting: str | Path, announce: bool = False) -> Path:
    """`ckpt=`: a checkpoint file, a run directory for its best.pt (as `resume=` takes one for its last.pt), or
    a sweep's folder for its best job's (`announce`: say which, in the log)."""
    path = user_path(setting)
    if not path.is_dir():
        return path
    if not (path / BEST).is_file():
        from fmnist.artifacts.sweep import best_job_checkpoint  # a sweep's folder: only where ckpt= names one

        if best := best_job_checkpoint(path, f"ckpt={setting} is a sweep: its best job" if announce else ""):
            return best
        hint = f" (it has {LAST}: ckpt={path / LAST})" if (path / LAST).is_file() else ""
        raise UserError(f"checkpoint {path} is a directory without {BEST}{hint}")
    return path / BEST


# torch.save(..., _use_new_zipfile_serialization=False), torch's format before 1.6: a pickle stream that opens
# with torch's magic number (protocol 2, a 10-byte long)
LEGACY_START = b"\x80\x02\x8a\x0a" + 0x1950A86A20F9469CFC6C.to_bytes(10, "little")


def check_checkpoint_file(path: str | Path) -> Path:
    """A checkpoint whose container torch.load can read without allocating more than the file holds: a zip
    of uncompressed records, no larger than the file itself.

    torch.save writes stored (uncompressed) records; a deflated record could inflate a few MB into GBs.
    """
    path = existing_file(path, "checkpoint")
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise UserError(f"{path} is {size / 2**30:.1f} GiB: larger than any checkpoint fmnist writes "
                        f"({MAX_CHECKPOINT_BYTES >> 30} GiB at most)")
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        with open(path, "rb") as f:
            legacy = f.read(len(LEGACY_START)) == LEGACY_START
        raise UserError(f"{path} is a torch.save file in the format before torch 1.6, which fmnist does not read "
                        f"(fmnist-train writes the zip format)" if legacy else
                        f"{path} is not a readable checkpoint (not a torch.save archive: {exc})") from None
    total = 0
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED or record.file_size != record.compress_size:
            raise UserError(f"{path} has a compressed record ({record.filename}): torch.save never writes one, "
                            f"refusing to inflate it")
        if record.filename.endswith("data.pkl") and record.file_size > MAX_PICKLE_BYTES:
            raise UserError(f"{path}: its pickled structure is {record.file_size >> 20} MiB, too large for an "
                            f"fmnist checkpoint")
        total += record.file_size
    if total > size:
        raise UserError(f"{path}: its records claim {total} bytes in a {size}-byte file (corrupt)")
    return path
