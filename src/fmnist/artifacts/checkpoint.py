"""What a checkpoint holds, writing it atomically, and reading it back safely.

A checkpoint describes itself: model and optimizer state, the resolved config, class names, metrics and
library versions, so fmnist-eval and fmnist-predict rebuild everything from the file alone. A checkpoint
may come from anywhere, so reading treats it as hostile data: the archive's records are size-checked before
anything is inflated (inputs.py), `torch.load(weights_only=True)` refuses objects that would run code when
unpickled, and every field is type-checked before use. (What its config may build is `allowlist.py`'s job.)
"""

from __future__ import annotations

import math
import pickle
import platform
from pathlib import Path
from typing import Any

import torch

from fmnist import __version__
from fmnist.artifacts.atomic import write_atomically
from fmnist.artifacts.inputs import check_checkpoint_file
from fmnist.errors import UserError, describe, one_line
from fmnist.runtime import PRECISIONS

FORMAT = "fmnist-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "model", "config", "class_names", "epoch", "metrics", "versions")


def versions() -> dict[str, str]:
    """What wrote a checkpoint. Only training writes one; it has imported torchvision to read its data by then."""
    import torchvision

    return {"fmnist": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`.

    A crash at any instant leaves either the old file or the new one, never a torn one.
    """
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(), **payload}
    write_atomically(path, lambda tmp: torch.save(payload, tmp), durable=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint written by fmnist, without unpickling arbitrary objects."""
    path = check_checkpoint_file(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # the file is user input: any failure to parse it is a user-facing error
        detail = one_line(exc, 10_000)
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in detail:
            unsafe = detail[detail.find("Unsupported global"):][:120] if "Unsupported global" in detail else ""
            raise UserError(f"refusing to load {path}: it holds objects that are not plain data, and loading "
                            f"it could run code ({unsafe or 'weights_only=True'})") from None
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                        f"{type(exc).__name__}: {one_line(detail)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an fmnist checkpoint{_what_it_is(ckpt)}")
    missing = [key for key in REQUIRED if key not in ckpt]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: written by another fmnist version?")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {describe(ckpt['format_version'])}, this fmnist "
                        f"({__version__}) reads format {FORMAT_VERSION}")
    _check_fields(ckpt, path)
    return ckpt


def _what_it_is(content: object) -> str:
    """A bare state dict (`torch.save(model.state_dict())`, the common way to share weights) says so: the file
    has the weights but not the config and class names an fmnist checkpoint carries with them."""
    if isinstance(content, dict) and content and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()):
        return (f": it holds a bare state dict ({len(content)} tensors), without the training config and class "
                f"names that fmnist-train's best.pt and last.pt carry")
    return ""


def _check_fields(ckpt: dict[str, Any], path: Path) -> None:
    """Every field fmnist reads, of the type it reads it as: a wrong one is a one-line error, not a crash."""

    def bad(field: str, expected: str) -> UserError:
        return UserError(f"{path}: field {field!r} is {describe(ckpt.get(field))}, expected {expected}")

    model = ckpt["model"]
    if not isinstance(model, dict) or not model or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise bad("model", "a state dict of named tensors")
    if not isinstance(ckpt["config"], dict):
        raise bad("config", "a mapping")
    names = ckpt["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("class_names", "a list of class names")
    epoch = ckpt["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < 2**31:
        raise bad("epoch", "an epoch count")
    metrics = ckpt["metrics"]
    if not isinstance(metrics, dict) or not isinstance(metrics.get("history"), list) or not all(
            isinstance(row, dict) for row in metrics["history"]):
        raise bad("metrics", "a mapping with a history list")
    best_epoch, best_val = metrics.get("best_epoch"), metrics.get("best_val_acc")
    if not isinstance(best_epoch, int) or isinstance(best_epoch, bool) or not isinstance(best_val, int | float) \
            or isinstance(best_val, bool) or not math.isfinite(best_val):
        raise bad("metrics", "best_epoch and best_val_acc numbers")
    test = metrics.get("test")
    if test is not None and not (isinstance(test, dict) and isinstance(test.get("accuracy", 0.0), int | float)):
        raise bad("metrics", "a test result mapping")
    choices = ckpt.get("choices", {})
    if not isinstance(choices, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in choices.items()):
        raise bad("choices", "a mapping of config group names")
    precision = ckpt.get("precision", "fp32")  # absent from checkpoints written before fmnist recorded it
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise bad("precision", f"one of {', '.join(PRECISIONS)}")
