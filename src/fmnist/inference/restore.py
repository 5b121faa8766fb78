"""A checkpoint back into a config and a model, for fmnist-eval and fmnist-predict.

The file may come from anywhere: `setup.config_from_checkpoint` (the one path from a stored config to
objects, which resume uses too) allowlists and validates its config, replaces its data directory with the
user's and sizes its model on the meta device before any memory is spent on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmnist.artifacts.checkpoint import load_checkpoint
from fmnist.artifacts.inputs import checkpoint_path
from fmnist.artifacts.sweep import default_checkpoint
from fmnist.config import InspectConfig, TrainConfig, lookup
from fmnist.data.layout import data_root
from fmnist.errors import UserError, describe, one_line
from fmnist.models import Classifier
from fmnist.paths import user_path
from fmnist.runtime import resolve_device
from fmnist.train.setup import build_model, config_from_checkpoint, in_memory_format, training_precision

log = logging.getLogger("fmnist")


@dataclass
class Restored:
    path: Path
    ckpt: dict[str, Any]
    cfg: TrainConfig  # the training config, with the user's data directory
    model: Classifier
    device: torch.device
    dtype: torch.dtype

    @property
    def class_names(self) -> list[str]:
        return list(self.ckpt["class_names"])

    @property
    def title(self) -> str:
        model = self.ckpt.get("choices", {}).get("model", type(self.model).__name__)
        return f"{model} on {self.cfg.dataset.name}"


def restore(settings: InspectConfig) -> Restored:
    """Load settings.ckpt (default: best.pt of the latest run) and rebuild its model on settings.device."""
    path = checkpoint_path(settings.ckpt, announce=True) if settings.ckpt else default_checkpoint()  # logs which
    ckpt = load_checkpoint(path)
    overrides = {"dataset.root": settings.data_root, "dataset.download": settings.data_download}
    cfg = config_from_checkpoint(ckpt, path, settings.trust, overrides)
    device = resolve_device(settings.device)
    dtype = training_precision(cfg, device, settings.precision, ckpt.get("precision"))
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(f"{path}: its weights do not fit its model config: {one_line(exc)}") from None
    model = in_memory_format(model.to(device), device, cfg.channels_last)  # as training ran it, where it applies
    return Restored(path, ckpt, cfg, model.eval(), device, dtype)


def say_where_the_data_is(r: Restored) -> None:
    """Before reading a dataset: the data directory is always this run's, never the file's (a file must not
    choose where fmnist reads). Where the model was trained on another, say so: a dataset missing here is
    then one override away."""
    trained_root, here = lookup(r.ckpt["config"], "dataset.root"), data_root(r.cfg.dataset.root)
    if isinstance(trained_root, str) and trained_root and user_path(trained_root) != here:
        log.info("trained with dataset.root=%s; reading the data from %s (dataset.root=, else $FMNIST_DATA, else "
                 "the default)", describe(trained_root, 200), here)
