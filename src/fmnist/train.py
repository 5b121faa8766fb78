"""One training run: the pieces built from the config, the epoch loop, and the artifacts it leaves.

Reads top to bottom like the recipe it is: data, model, optimizer, loop (train one epoch, validate,
checkpoint), then the best weights on the test set, metrics and figures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fmnist.build import build_loss, build_model, build_optimizer, build_scheduler
from fmnist.checkpoint import load_checkpoint, save_checkpoint
from fmnist.config import validate
from fmnist.engine import EvalResult, NonFiniteLoss, evaluate, train_one_epoch
from fmnist.errors import UserError
from fmnist.loaders import make_batches
from fmnist.metrics import class_report, write_history
from fmnist.plots import plot_confusion, plot_curves
from fmnist.runtime import resolve_device, resolve_precision, seed_everything, show_progress

log = logging.getLogger("fmnist")


@dataclass
class RunResult:
    out_dir: Path
    best_epoch: int
    best_val_acc: float
    test: dict[str, Any]
    seconds: float


def run_training(cfg: DictConfig, out_dir: Path, choices: dict[str, str] | None = None) -> RunResult:
    """Train cfg's model on cfg's dataset and write every artifact into out_dir."""
    validate(cfg)
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    progress = show_progress(cfg.progress)
    seed_everything(cfg.seed)
    config = OmegaConf.to_container(cfg, resolve=True)
    choices = dict(choices or {})
    class_names = list(cfg.dataset.classes)

    train_batches = make_batches(cfg, "train", device, batch_size=cfg.batch_size, training=True)
    val_batches = make_batches(cfg, "val", device, batch_size=cfg.eval_batch_size, training=False)
    model = build_model(cfg).to(device)
    loss_fn = build_loss(cfg).to(device)
    optimizer = build_optimizer(cfg, model.parameters(), device)
    scheduler, interval = build_scheduler(cfg, optimizer, len(train_batches))
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    step_scheduler = scheduler.step if scheduler is not None and interval == "step" else None

    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %d train / %d val images | model %s (%s parameters) | optimizer %s lr %g | %s %s | loader %s",
             cfg.dataset.name, train_batches.num_samples, val_batches.num_samples, choices.get("model", "?"),
             f"{n_params:,}", choices.get("optimizer", "?"), cfg.optimizer.lr, device,
             str(dtype).removeprefix("torch."), cfg.data.loader)
    log.info("run directory: %s", out_dir)

    history: list[dict[str, Any]] = []
    best_epoch, best_val_acc = 0, -1.0
    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_batches.set_epoch(epoch)
        try:
            train = train_one_epoch(model, train_batches, loss_fn, optimizer, device=device, dtype=dtype,
                                    scaler=scaler, step_scheduler=step_scheduler, progress=progress,
                                    desc=f"epoch {epoch}/{cfg.epochs}")
        except NonFiniteLoss as exc:
            last = out_dir / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise UserError(f"epoch {epoch}: {exc}; {kept}. Try a lower optimizer.lr") from None
        if scheduler is not None and interval == "epoch":
            scheduler.step()
        val = evaluate(model, val_batches, loss_fn, cfg.dataset.num_classes, device=device, dtype=dtype,
                       progress=progress, desc="validate")
        row = {
            "epoch": epoch,
            "train_loss": train.loss,
            "train_acc": train.accuracy,
            "val_loss": val.loss,
            "val_acc": val.accuracy,
            "lr": lr,
            "seconds": time.perf_counter() - epoch_start,
            "samples_per_s": train.samples_per_s,
        }
        history.append(row)
        improved = val.accuracy > best_val_acc
        if improved:
            best_epoch, best_val_acc = epoch, val.accuracy
        metrics = {"history": history, "best_epoch": best_epoch, "best_val_acc": best_val_acc, "test": None,
                   "status": "running"}
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch,
            "config": config,
            "choices": choices,
            "class_names": class_names,
            "metrics": metrics,
        }
        save_checkpoint(payload, out_dir / "last.pt")
        if improved:
            save_checkpoint(payload, out_dir / "best.pt")
        write_history(out_dir, history, {k: v for k, v in metrics.items() if k != "history"})
        log.info("epoch %d/%d | train loss %.4f acc %.2f%% | val loss %.4f acc %.2f%%%s | lr %.2e | %.1fs | "
                 "%s samples/s", epoch, cfg.epochs, train.loss, 100 * train.accuracy, val.loss,
                 100 * val.accuracy, " *" if improved else "", lr, row["seconds"], f"{train.samples_per_s:,.0f}")

    best = load_checkpoint(out_dir / "best.pt", map_location=device)
    model.load_state_dict(best["model"])
    test_batches = make_batches(cfg, "test", device, batch_size=cfg.eval_batch_size, training=False)
    result = evaluate(model, test_batches, loss_fn, cfg.dataset.num_classes, device=device, dtype=dtype,
                      progress=progress, desc="test")
    test = test_summary(result, class_names, best_epoch)
    best["metrics"].update(test=test, status="completed")
    save_checkpoint(best, out_dir / "best.pt")
    summary = {"best_epoch": best_epoch, "best_val_acc": best_val_acc, "test": test, "status": "completed",
               "seconds": time.perf_counter() - started}
    write_history(out_dir, history, summary)
    title = f"{choices.get('model', '')} on {cfg.dataset.name}".strip()
    plot_curves(history, out_dir / "curves.png", title=title)
    plot_confusion(result.confusion, class_names, out_dir / "confusion_matrix.png",
                   title=f"{title}: test accuracy {result.accuracy:.2%}")
    return RunResult(out_dir, best_epoch, best_val_acc, test, summary["seconds"])


def test_summary(result: EvalResult, class_names: list[str], epoch: int) -> dict[str, Any]:
    """What a checkpoint and metrics.json record of the test set."""
    report = class_report(result.confusion, class_names)
    return {
        "accuracy": result.accuracy,
        "loss": result.loss,
        "macro_f1": report["macro_f1"],
        "samples": result.samples,
        "epoch": epoch,
        "per_class_accuracy": {row["class"]: row["accuracy"] for row in report["classes"]},
    }
