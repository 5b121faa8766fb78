"""A checkpoint back into a config and a model: the one path from a file to objects.

The file may come from anywhere. Its config is checked against the allowlist before OmegaConf or Hydra see
it, its stored data directory is replaced by the user's (a file must not choose where fmnist reads or
creates directories), and the model is sized on the meta device and compared with the stored weights
before any memory is spent on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fmnist.allowlist import check_stored_config
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


def stored_config(state: dict[str, Any], path: Path, trusted: frozenset[str], overrides: dict[str, Any]
                  ) -> DictConfig:
    """The checkpoint's training config, allowlisted and validated, with `overrides` (dotted key -> value).

    dataset.root is always the caller's, even when None (the default data directory): never the file's.
    """
    check_stored_config(state["config"], trusted, source=str(path))
    cfg = OmegaConf.create(state["config"])
    for key, value in overrides.items():
        if value is not None or key == "dataset.root":
            OmegaConf.update(cfg, key, value, force_add=True)
    try:
        validate(cfg)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    if list(cfg.dataset.classes) != state["class_names"]:
        raise UserError(f"{path}: its class_names do not match its config's dataset.classes")
    return cfg


def restore(ckpt: str | None, dataset_overrides: DictConfig | None, device: str, precision: str | None,
            trusted: frozenset[str] = frozenset()) -> Restored:
    """Load `ckpt` (default: best.pt of the latest run), apply overrides (null = keep), build the model."""
    path = Path(ckpt).expanduser() if ckpt else latest_checkpoint()
    if not ckpt:
        log.info("using the latest run's checkpoint: %s", path)
    state = load_checkpoint(path)
    overrides = {f"dataset.{key}": value for key, value in (dataset_overrides or {}).items()}
    known = ("dataset.root", "dataset.download")
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise UserError(f"{unknown[0]} cannot be changed at eval time (only {', '.join(known)})")
    overrides.setdefault("dataset.root", None)
    cfg = stored_config(state, path, trusted, overrides)
    dev = resolve_device(device)
    dtype = resolve_precision(precision or cfg.precision, dev)
    return Restored(path, state, cfg, model_from_checkpoint(state, cfg, dev), dev, dtype)
