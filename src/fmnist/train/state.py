"""Where a run stands, and the rules for continuing one: TrainState <-> checkpoint, random generators, resume.

A checkpoint holds the objects' own state (model, optimizer, scheduler, scaler), this TrainState (history,
best epoch, a partly trained epoch) and every random generator, so that a run resumed from any step ends
with the same weights and metrics as one that was never stopped.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmnist.artifacts.checkpoint import load_checkpoint
from fmnist.config import TrainConfig, lookup
from fmnist.data.batches import Batches
from fmnist.errors import UserError, one_line
from fmnist.runtime import precision_name
from fmnist.train.loop import EpochStats
from fmnist.train.setup import Training, config_from_checkpoint

# Keys a resumed run may change; everything else comes from the checkpoint, so the run stays the same run.
# The command's own, always: where and how it runs (the data directory, device, threads, progress, trackers).
COMMAND_KEYS = ("device", "progress", "num_workers", "threads", "dataset.root", "dataset.download", "logger")
# The run's own, changed only where the command names them: `resume=auto` alone, as a stopped run prints it,
# continues the run as it was, not with the command's defaults (a 2-epoch run would go on to 10).
RUN_KEYS = ("epochs", "checkpoint_every_steps", "on_nan", "skip_batch_limit", "tta")
HISTORY_NUMBERS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


@dataclass
class TrainState:
    """The run's progress besides the objects' weights: what it needs to continue, and what it reports."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = -1.0
    epochs_done: int = 0
    partial: EpochStats | None = None  # an epoch stopped part-way, continued on resume
    partial_data_rng: torch.Tensor | None = None  # the augmentation generator's state at that step

    def add_epoch(self, row: dict[str, Any]) -> bool:
        """Record a finished epoch; True if its validation accuracy is the best so far."""
        self.history.append(row)
        self.epochs_done = row["epoch"]
        self.partial, self.partial_data_rng = None, None
        improved = row["val_acc"] > self.best_val_acc
        if improved:
            self.best_epoch, self.best_val_acc = row["epoch"], row["val_acc"]
        return improved

    def summary(self, status: str) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "best_val_acc": self.best_val_acc, "test": None, "status": status}

    def checkpoint(self, training: Training, cfg: TrainConfig, choices: dict[str, str], status: str, *,
                   in_progress: EpochStats | None = None, data_rng: torch.Tensor | None = None) -> dict[str, Any]:
        """Everything needed to continue exactly from here (mid-epoch when `in_progress` is given)."""
        return {
            **training.state_dicts(),
            "epoch": self.epochs_done,
            "partial": {"stats": asdict(in_progress), "lr": in_progress.lr, "data_rng": data_rng}
            if in_progress is not None else None,
            "config": cfg.resolved,
            "choices": choices,
            "class_names": list(cfg.dataset.classes),
            "precision": precision_name(training.dtype),
            "metrics": {"history": self.history, **self.summary(status)},
            "rng": rng_state(),
        }


def resumed_config(ckpt: dict[str, Any], path: Path, current: TrainConfig, named: frozenset[str],
                   choices: dict[str, str]) -> TrainConfig:
    """The checkpoint's own config, with the keys a resumed run may change taken from `current`: COMMAND_KEYS,
    and those of RUN_KEYS the command `named`. `choices`: the command's config group options."""
    keys = COMMAND_KEYS + tuple(key for key in RUN_KEYS if key in named)
    overrides = {key: lookup(current.resolved, key) for key in keys}
    cfg = config_from_checkpoint(ckpt, path, current.trust, overrides)
    # Anything else the command names must be what the run has (a sweep run again with resume=auto names its
    # jobs' own values); a new learning rate or model would otherwise be dropped without a word. A group
    # (`model=cnn`, `experiment=fashion_best`) is compared by the option chosen: an experiment is no key of the
    # config, and a run's model.channels=[16,32] is still model=cnn.
    stored = ckpt.get("choices", {})

    def differs(key: str) -> bool:
        if key in choices or key in stored:
            return choices.get(key) != stored.get(key)
        return lookup(current.resolved, key) != lookup(cfg.resolved, key)

    changed = sorted(key for key in named - {*keys, "resume", "trust"}
                     if not key.startswith("hydra") and differs(key))
    if changed:
        raise UserError(f"{', '.join(changed)} cannot change in a resumed run, which keeps its checkpoint's config "
                        f"(a resume may set {', '.join(RUN_KEYS + COMMAND_KEYS)}): start a new run for other "
                        f"settings")
    if cfg.epochs < ckpt["epoch"]:
        raise UserError(f"epochs={cfg.epochs} is fewer than the {ckpt['epoch']} epochs the checkpoint has done")
    return cfg


def check_not_behind(ckpt: dict[str, Any], path: Path, last: Path) -> None:
    """A resumed run writes into the checkpoint's directory, so continuing from an older checkpoint there
    (resume=RUN/best.pt while RUN/last.pt has trained further) would overwrite that run's later state and
    history. An unreadable last.pt is no reason to refuse: the older file is then the way back."""
    if path.resolve() == last.resolve() or not last.is_file():
        return
    try:
        newer = load_checkpoint(last)
    except UserError:
        return
    if _progress(newer) > _progress(ckpt):
        raise UserError(f"{path} has {_position(ckpt)}, behind {last} ({_position(newer)}): continuing from it "
                        f"there would overwrite the later state. Resume the run (resume=auto), or copy {path.name} "
                        f"into a new directory and resume from the copy to branch from it")


def _progress(ckpt: dict[str, Any]) -> tuple[int, int]:
    """(epochs done, steps into the next): how far a checkpoint's run had trained (a field of the wrong kind,
    which resume_state refuses, counts as no steps here)."""
    partial = ckpt.get("partial")
    stats = partial.get("stats") if isinstance(partial, dict) else None
    steps = stats.get("steps") if isinstance(stats, dict) else 0
    return ckpt["epoch"], steps if isinstance(steps, int) and not isinstance(steps, bool) else 0


def _position(ckpt: dict[str, Any]) -> str:
    return position(*_progress(ckpt))


def position(epochs_done: int, steps: int) -> str:
    """Where a run stands, as the log and the refusals say it."""
    return (f"{epochs_done} epoch{'' if epochs_done == 1 else 's'} done"
            + (f", epoch {epochs_done + 1} at step {steps}" if steps else ""))


def resume_state(ckpt: dict[str, Any], path: Path, training: Training, batches: Batches) -> TrainState:
    """Load the checkpoint's state into `training` and the random generators, and return its TrainState.

    The file's state is checked by use: any part that does not fit this run is a one-line refusal.
    """
    try:
        training.load_state_dicts(ckpt)
        metrics = ckpt["metrics"]
        state = TrainState(list(metrics["history"]), metrics["best_epoch"], metrics["best_val_acc"], ckpt["epoch"])
        for row in state.history:
            [float(row[k]) for k in HISTORY_NUMBERS]
        if ckpt.get("partial"):
            partial = ckpt["partial"]
            state.partial = EpochStats(**{**partial["stats"], "epoch": ckpt["epoch"] + 1, "lr": float(partial["lr"])})
            state.partial_data_rng = partial["data_rng"]
            batches.set_rng_state(state.partial_data_rng)  # checked now; set again when the epoch starts
        set_rng_state(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise UserError(f"cannot resume from {path}: its training state does not fit this run "
                        f"({type(exc).__name__}: {one_line(exc, 120)})") from None
    return state


def rng_state() -> dict[str, Any]:
    """Every random generator's state, as plain data a weights_only load accepts."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
