"""A trained model back from its checkpoint, with the few settings a user may change at eval time."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fmnist.build import model_from_checkpoint
from fmnist.checkpoint import latest_checkpoint, load_checkpoint
from fmnist.config import validate
from fmnist.errors import UserError
from fmnist.models import Classifier
from fmnist.runtime import resolve_device, resolve_precision

log = logging.getLogger("fmnist")


@dataclass
class Restored:
    path: Path
    ckpt: dict[str, Any]
    cfg: DictConfig  # the training config, with the caller's dataset overrides applied
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


def restore(ckpt: str | None, dataset_overrides: DictConfig | None, device: str, precision: str | None
            ) -> Restored:
    """Load `ckpt` (default: best.pt of the latest run), apply overrides (null = keep), build the model."""
    path = Path(ckpt).expanduser() if ckpt else latest_checkpoint()
    if not ckpt:
        log.info("using the latest run's checkpoint: %s", path)
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    for key, value in (dataset_overrides or {}).items():
        if value is not None:
            if key not in cfg.dataset:
                raise UserError(f"dataset.{key} is not a dataset setting (known: {', '.join(cfg.dataset)})")
            cfg.dataset[key] = value
    try:
        validate(cfg)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    dev = resolve_device(device)
    dtype = resolve_precision(precision or cfg.precision, dev)
    return Restored(path, state, cfg, model_from_checkpoint(state, cfg, dev), dev, dtype)
