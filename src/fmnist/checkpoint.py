"""What a checkpoint holds, writing it atomically, and reading it back safely.

A checkpoint describes itself: model and optimizer state, the resolved config, class names, metrics and
library versions, so fmnist-eval and fmnist-predict rebuild everything from the file alone. Reading uses
`torch.load(weights_only=True)`: a file crafted to run code when unpickled is refused, not executed.
"""

from __future__ import annotations

import pickle
import platform
from pathlib import Path
from typing import Any

import torch
import torchvision

from fmnist import __version__
from fmnist.atomic import write_atomically
from fmnist.errors import UserError

FORMAT = "fmnist-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "model", "config", "class_names", "epoch", "metrics", "versions")


def versions() -> dict[str, str]:
    return {"fmnist": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`.

    A crash at any instant leaves either the old file or the new one, never a torn one.
    """
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(), **payload}
    try:
        write_atomically(path, lambda tmp: torch.save(payload, tmp), durable=True)
    except OSError as exc:
        raise UserError(f"could not write checkpoint {path}: {exc.strerror or exc}") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint written by fmnist, without unpickling arbitrary objects."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # the file is user input: any failure to parse it is a user-facing error
        detail = " ".join(str(exc).split())
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in detail:
            unsafe = detail[detail.find("Unsupported global"):][:120] if "Unsupported global" in detail else ""
            raise UserError(f"refusing to load {path}: it holds objects that are not plain data, and loading "
                            f"it could run code ({unsafe or 'weights_only=True'})") from None
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                        f"{type(exc).__name__}: {detail[:160]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an fmnist checkpoint")
    missing = [key for key in REQUIRED if key not in ckpt]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: written by another fmnist version?")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {ckpt['format_version']}, this fmnist "
                        f"({__version__}) reads format {FORMAT_VERSION}")
    return ckpt


def latest_checkpoint(search_dirs: tuple[Path, ...] = (Path("outputs"), Path("multirun"))) -> Path:
    """best.pt of the most recent training run under the output directories."""
    found = [p for d in search_dirs if d.is_dir() for p in d.rglob("best.pt")]
    if not found:
        where = " or ".join(f"{d}/" for d in search_dirs)
        raise UserError(f"no trained model found under {where} (looked for best.pt): train one with "
                        f"fmnist-train, or pass ckpt=PATH")
    return max(found, key=lambda p: p.stat().st_mtime)
