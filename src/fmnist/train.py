"""One training run: the pieces built from the config, the epoch loop, and the artifacts it leaves.

Reads top to bottom like the recipe it is: data, model, optimizer, loop (train one epoch, validate,
checkpoint), then the best weights on the test set, metrics and figures. A run can stop at any step
(SIGINT/SIGTERM, a crash) and `resume` continues it from `last.pt` to the same weights and metrics.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fmnist.allowlist import check_trust
from fmnist.build import build_scheduler, build_training, check_weights_fit
from fmnist.checkpoint import load_checkpoint, save_checkpoint
from fmnist.config import validate
from fmnist.engine import EpochStats, EvalResult, NonFiniteLoss, evaluate, train_one_epoch
from fmnist.errors import UserError
from fmnist.interrupt import Interrupted, StopRequest
from fmnist.loaders import make_batches
from fmnist.metrics import class_report, record_status, write_history
from fmnist.plots import plot_confusion, plot_curves
from fmnist.restore import stored_config
from fmnist.rundir import claim, existing_run
from fmnist.runtime import resolve_device, resolve_precision, seed_everything, show_progress

log = logging.getLogger("fmnist")

# Keys a resumed run may change; everything else comes from the checkpoint, so the run stays the same run.
RESUMABLE_OVERRIDES = ("epochs", "device", "progress", "num_workers", "threads", "checkpoint_every_steps",
                       "on_nan", "skip_batch_limit", "dataset.root", "dataset.download")


@dataclass
class RunResult:
    out_dir: Path
    best_epoch: int
    best_val_acc: float
    test: dict[str, Any]
    seconds: float


def run_training(cfg: DictConfig, out_dir: Path, choices: dict[str, str] | None = None) -> RunResult:
    """Train cfg's model on cfg's dataset (or continue `cfg.resume`) and write every artifact into out_dir.

    The run directory is claimed first (one process at a time, never over another run unless resuming);
    from then on any failure is recorded in its metrics.json before it propagates.
    """
    try:
        validate(cfg)
        trusted = check_trust(cfg.get("trust") or [])
        resume_from = _resume_source(cfg, out_dir)
    except UserError as exc:
        if not existing_run(out_dir):  # a fresh directory: say there why this run never started
            record_status(out_dir, "failed", str(exc))
        raise
    if resume_from is not None:
        out_dir = resume_from.parent
    with claim(out_dir, resuming=bool(cfg.get("resume"))):
        try:
            return _train(cfg, out_dir, choices, resume_from, trusted)
        except Interrupted as exc:
            record_status(out_dir, "interrupted", str(exc))
            raise
        except UserError as exc:
            record_status(out_dir, "failed", str(exc))
            raise


def _train(cfg: DictConfig, out_dir: Path, choices: dict[str, str] | None, resume_from: Path | None,
           trusted: frozenset[str]) -> RunResult:
    started = time.perf_counter()
    resumed = load_checkpoint(resume_from) if resume_from else None
    if resumed is not None:
        cfg = _resumed_config(resumed, resume_from, cfg, trusted)
        choices = resumed.get("choices", choices)
    else:
        record_status(out_dir, "running")
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    progress = show_progress(cfg.progress)
    seed_everything(cfg.seed)
    config = OmegaConf.to_container(cfg, resolve=True)
    choices = dict(choices or {})
    class_names = list(cfg.dataset.classes)

    train_batches = make_batches(cfg, "train", device, batch_size=cfg.batch_size, training=True)
    val_batches = make_batches(cfg, "val", device, batch_size=cfg.eval_batch_size, training=False)
    # Opened now, so a missing or corrupt test file is found before training, not after it.
    test_batches = make_batches(cfg, "test", device, batch_size=cfg.eval_batch_size, training=False)
    # compile=torch compiles the module the loop calls (net); checkpoints keep saving the plain model's weights.
    parts = build_training(cfg, train_batches, device, dtype)
    model, net, loss_fn, optimizer, runner = parts.model, parts.net, parts.loss_fn, parts.optimizer, parts.runner
    compile_mode = cfg.get("compile", "none")
    scheduler, interval = build_scheduler(cfg, optimizer, len(train_batches))
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    step_scheduler = scheduler.step if scheduler is not None and interval == "step" else None

    history: list[dict[str, Any]] = []
    best_epoch, best_val_acc, done_epochs = 0, -1.0, 0
    partial: EpochStats | None = None
    epoch_lr: float | None = None
    if resumed is not None:
        try:  # the file's state, checked by use: any part that does not fit is a one-line refusal
            model.load_state_dict(resumed["model"])
            optimizer.load_state_dict(resumed["optimizer"])
            if scheduler is not None and resumed.get("scheduler"):
                scheduler.load_state_dict(resumed["scheduler"])
            if scaler is not None and resumed.get("scaler"):
                scaler.load_state_dict(resumed["scaler"])
            history = list(resumed["metrics"]["history"])
            best_epoch, best_val_acc = resumed["metrics"]["best_epoch"], resumed["metrics"]["best_val_acc"]
            done_epochs = resumed["epoch"]
            for row in history:
                [float(row[k]) for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")]
            if resumed.get("partial"):
                partial = EpochStats(**resumed["partial"]["stats"])
                epoch_lr = float(resumed["partial"]["lr"])
                train_batches.set_rng_state(resumed["partial"]["data_rng"])  # checked now, set again below
            _set_rng_state(resumed["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            raise UserError(f"cannot resume from {resume_from}: its training state does not fit this run "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
        log.info("resuming %s: %d epochs done%s", resume_from, done_epochs,
                 f", epoch {done_epochs + 1} at step {partial.steps}" if partial else "")

    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %d train / %d val images | model %s (%s parameters) | optimizer %s lr %g | %s %s | loader %s",
             cfg.dataset.name, train_batches.num_samples, val_batches.num_samples, choices.get("model", "?"),
             f"{n_params:,}", choices.get("optimizer", "?"), cfg.optimizer.lr, device,
             str(dtype).removeprefix("torch."), cfg.data.loader)
    log.info("run directory: %s", out_dir)

    def payload(epochs_done: int, in_progress: EpochStats | None, lr: float | None, status: str) -> dict[str, Any]:
        """Everything needed to continue exactly from here."""
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epochs_done,
            "partial": {"stats": asdict(in_progress), "lr": lr, "data_rng": train_batches.rng_state()}
            if in_progress is not None else None,
            "config": config,
            "choices": choices,
            "class_names": class_names,
            "metrics": {"history": history, "best_epoch": best_epoch, "best_val_acc": best_val_acc, "test": None,
                        "status": status},
            "rng": _rng_state(),
        }

    # The first steps this process trains compile (compile=torch) or capture (cudagraph): timed apart.
    warmup_steps = runner.WARMUP if runner is not None else (1 if compile_mode == "torch" else 0)
    every = cfg.get("checkpoint_every_steps") or 0
    skip_nonfinite = cfg.get("on_nan", "stop") == "skip_batch"
    with StopRequest() as stop:
        for epoch in range(done_epochs + 1, cfg.epochs + 1):
            train_batches.set_epoch(epoch)
            if partial is not None:
                train_batches.set_rng_state(resumed["partial"]["data_rng"])
            lr = epoch_lr if epoch_lr is not None else optimizer.param_groups[0]["lr"]

            def after_step(step: int, snapshot: Any, lr: float = lr, epoch: int = epoch) -> bool:
                if stop:
                    return True
                if every and step % every == 0:
                    now = snapshot()
                    if not math.isfinite(now.loss_sum):  # never save diverged weights as the last good state
                        raise NonFiniteLoss(step)
                    save_checkpoint(payload(epoch - 1, now, lr, "running"), out_dir / "last.pt")
                return False

            try:
                train = train_one_epoch(net, train_batches, loss_fn, optimizer, device=device, dtype=dtype,
                                        scaler=scaler, step_scheduler=step_scheduler, progress=progress,
                                        desc=f"epoch {epoch}/{cfg.epochs}", runner=runner, start=partial,
                                        after_step=after_step, skip_nonfinite=skip_nonfinite,
                                        warmup_steps=warmup_steps)
                warmup_steps = 0
            except NonFiniteLoss as exc:
                raise UserError(f"epoch {epoch}: {exc}; {_kept(out_dir)}. Try a lower optimizer.lr, or "
                                f"on_nan=skip_batch") from None
            partial, epoch_lr = None, None
            if not train.completed:
                save_checkpoint(payload(epoch - 1, train, lr, "interrupted"), out_dir / "last.pt")
                raise _interrupted(stop, out_dir, f"epoch {epoch} step {train.steps}")
            if train.skipped:
                log.warning("epoch %d: skipped %d batches with a NaN/inf loss (on_nan=skip_batch)", epoch,
                            train.skipped)
                limit = cfg.get("skip_batch_limit", 0.25)
                if train.samples == 0 or train.skipped > limit * train.steps:
                    raise UserError(f"epoch {epoch}: the training loss was NaN/inf in {train.skipped} of "
                                    f"{train.steps} batches (more than skip_batch_limit={limit}); "
                                    f"{_kept(out_dir)}. Try a lower optimizer.lr")
            if scheduler is not None and interval == "epoch":
                scheduler.step()
            val = evaluate(net, val_batches, loss_fn, cfg.dataset.num_classes, device=device, dtype=dtype,
                           progress=progress, desc="validate")
            row = {
                "epoch": epoch,
                "train_loss": train.loss,
                "train_acc": train.accuracy,
                "val_loss": val.loss,
                "val_acc": val.accuracy,
                "lr": lr,
                "seconds": train.seconds + val.seconds,
                "samples_per_s": train.samples_per_s,
                "warmup_s": train.warmup_seconds,
            }
            history.append(row)
            improved = val.accuracy > best_val_acc
            if improved:
                best_epoch, best_val_acc = epoch, val.accuracy
            state = payload(epoch, None, None, "running")
            # best.pt before last.pt: a run killed between the two resumes from the older last.pt and
            # redoes this epoch, instead of trusting a last.pt whose best.pt was never written.
            if improved:
                save_checkpoint(state, out_dir / "best.pt")
            save_checkpoint(state, out_dir / "last.pt")
            write_history(out_dir, history, {k: v for k, v in state["metrics"].items() if k != "history"})
            warmup = f" (incl. {train.warmup_seconds:.1f}s one-time {compile_mode} warm-up)" \
                if train.warmup_seconds else ""
            log.info("epoch %d/%d | train loss %.4f acc %.2f%% | val loss %.4f acc %.2f%%%s | lr %.2e | %.1fs%s | "
                     "%s samples/s", epoch, cfg.epochs, train.loss, 100 * train.accuracy, val.loss,
                     100 * val.accuracy, " *" if improved else "", lr, row["seconds"], warmup,
                     f"{train.samples_per_s:,.0f}")
            if stop:
                raise _interrupted(stop, out_dir, f"the end of epoch {epoch}")

    best = load_checkpoint(out_dir / "best.pt", map_location=device)
    model.load_state_dict(best["model"])
    result = evaluate(model, test_batches, loss_fn, cfg.dataset.num_classes, device=device, dtype=dtype,
                      progress=progress, desc="test")
    test = test_summary(result, class_names, best_epoch)
    # Figures first, "completed" last: a run whose artifacts were not all written never claims to be done.
    title = f"{choices.get('model', '')} on {cfg.dataset.name}".strip()
    plot_curves(history, out_dir / "curves.png", title=title)
    plot_confusion(result.confusion, class_names, out_dir / "confusion_matrix.png",
                   title=f"{title}: test accuracy {result.accuracy:.2%}")
    best["metrics"].update(test=test, status="completed")
    save_checkpoint(best, out_dir / "best.pt")
    summary = {"best_epoch": best_epoch, "best_val_acc": best_val_acc, "test": test, "status": "completed",
               "seconds": time.perf_counter() - started}
    write_history(out_dir, history, summary)
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


def _resume_source(cfg: DictConfig, out_dir: Path) -> Path | None:
    """resume=auto: this run directory's last.pt if there is one; resume=PATH: a checkpoint or a run dir."""
    setting = cfg.get("resume")
    if not setting:
        return None
    if setting == "auto":
        candidate = out_dir / "last.pt"
        return candidate if candidate.is_file() else None
    path = Path(setting).expanduser()
    path = path / "last.pt" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"resume={setting}: there is no checkpoint at {path}")
    return path


def _resumed_config(ckpt: dict[str, Any], path: Path, current: DictConfig, trusted: frozenset[str]) -> DictConfig:
    """The checkpoint's own config (allowlisted), with only the keys a resumed run may change taken from
    `current`; the data directory is always the current one, never the file's."""
    overrides = {key: OmegaConf.select(current, key, default=None) for key in RESUMABLE_OVERRIDES}
    cfg = stored_config(ckpt, path, trusted, overrides)
    if cfg.epochs < ckpt["epoch"]:
        raise UserError(f"epochs={cfg.epochs} is fewer than the {ckpt['epoch']} epochs the checkpoint has done")
    check_weights_fit(cfg, ckpt["model"], str(path))
    return cfg


def _kept(out_dir: Path) -> str:
    last = out_dir / "last.pt"
    return f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"


def _interrupted(stop: StopRequest, out_dir: Path, where: str) -> Interrupted:
    return Interrupted(f"stopped by {stop.name} at {where}; saved {out_dir / 'last.pt'}. Resume with: "
                       f"fmnist-train hydra.run.dir={out_dir} resume=auto", stop.signum or 2)


def _rng_state() -> dict[str, Any]:
    """Every random generator's state, as plain data a weights_only load accepts."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
