"""One training run: setup, then the epoch loop (train, validate, checkpoint), then the best weights on the
test set and the figures.

A run can stop at any step (SIGINT/SIGTERM, a crash) and `resume` continues it from `last.pt` to the same
weights and metrics.

Under torchrun every rank runs this same function on its share of the data (`World`, data/batches.Shard);
rank 0 alone claims and writes the run directory, and the ranks agree through `Collective` on the metrics
and on when to stop.
"""

from __future__ import annotations

import logging
import math
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmnist.artifacts.checkpoint import load_checkpoint
from fmnist.artifacts.report import Mistakes, class_report, most_confident_mistakes
from fmnist.artifacts.rundir import LAST, FollowerRunDir, RunDir, resume_source
from fmnist.artifacts.tracking import Launch, RunInfo, Trackers, make_trackers, step_interval
from fmnist.config import TrainConfig, check_world, lookup
from fmnist.data.batches import Shard, load_split, make_batches
from fmnist.data.transforms import TTA, mirroring_note, unflipped_note
from fmnist.errors import Interrupted, UserError, one_line
from fmnist.paths import quoted_override
from fmnist.runtime import precision_name, resolve_device, seed_everything, show_progress
from fmnist.train.distributed import Collective
from fmnist.train.interrupt import StopRequest
from fmnist.train.loop import EpochStats, EvalResult, NonFiniteLoss, evaluate, train_epochs
from fmnist.train.setup import build_training, check_model_fits, training_precision, try_loss, try_optimizer
from fmnist.train.state import TrainState, check_not_behind, position, resume_state, resumed_config
from fmnist.train.step import make_step, resolve_compile
from fmnist.world import World

log = logging.getLogger("fmnist")


class ResumeRefused(UserError):
    """A resume that cannot start here (no GPU, its data missing, ...): nothing has run, so the run directory
    stays as it was; a completed or interrupted run is not recorded as failed."""


@dataclass
class RunResult:
    out_dir: Path
    best_epoch: int
    best_val_acc: float
    test: dict[str, Any]
    seconds: float


def run_training(cfg: TrainConfig, out_dir: Path, choices: dict[str, str] | None = None,
                 world: World = World(), launch: Launch = Launch(), stop_file: Path | None = None,
                 named: frozenset[str] = frozenset()) -> RunResult:
    """Train cfg's model on cfg's dataset (or continue `cfg.resume`) and write every artifact into out_dir.

    The run directory is claimed first (one process at a time, never over another run unless resuming);
    from then on any failure is recorded in its metrics.json, its report.html and the trackers before it
    propagates. `stop_file`: where a parallel sweep asks its jobs to stop (train/interrupt.py). `named`: the
    keys the command line set, which a resumed run takes from cfg (train/state.py).
    """
    run_dir = RunDir if world.main else FollowerRunDir
    try:
        resume_from = resume_source(cfg.resume, out_dir)
    except UserError as exc:
        fresh = run_dir(out_dir)
        if not fresh.existing_run():  # a fresh directory: say there why this run never started
            fresh.record_status("failed", str(exc))
        raise
    run = run_dir(resume_from.parent if resume_from is not None else out_dir)
    with run.claim(resuming=bool(cfg.resume)):
        started = time.perf_counter()
        choices = dict(choices or {})
        # A resume refused here (a corrupt last.pt, a setting the run cannot continue with) leaves the run as
        # it was, as ResumeRefused does later.
        resumed = load_checkpoint(resume_from) if resume_from is not None else None
        if resumed is not None:
            check_not_behind(resumed, resume_from, run.last)
            cfg = check_world(resumed_config(resumed, resume_from, cfg, named, choices), world)
            choices = resumed.get("choices", choices)
        try:
            return _train(cfg, run, choices, resume_from, resumed, Collective(world), launch, stop_file, started)
        except ResumeRefused:
            raise
        except Interrupted as exc:
            run.record_status("interrupted", str(exc))
            run.finish("interrupted")
            raise
        except UserError as exc:
            run.record_status("failed", str(exc))
            run.finish("failed")
            raise
        except Exception as exc:  # a bug, or a library's error fmnist did not foresee: the traceback follows
            run.record_status("failed", f"{type(exc).__name__}: {one_line(exc)}")
            run.finish("failed")
            raise


def _train(cfg: TrainConfig, run: RunDir, choices: dict[str, str], resume_from: Path | None,
           resumed: dict[str, Any] | None, ranks: Collective, launch: Launch, stop_file: Path | None,
           started: float) -> RunResult:
    if resumed is None:
        run.record_status("running")
    world = ranks.world
    try:
        device = resolve_device(cfg.device, world.local_rank if ranks.distributed else None)
        dtype = training_precision(cfg, device, trained=resumed.get("precision") if resumed is not None else None)
        try_loss(cfg)
        check_model_fits(cfg, device, try_optimizer(cfg))  # both fail now rather than at the first step
        if world.main and (note := mirroring_note(cfg.dataset, cfg.tta, cfg.dataset.augment.hflip)
                           or unflipped_note(cfg.dataset.augment, cfg.tta)):
            log.warning(note)
        progress = show_progress(cfg.progress) and world.main
        seed_everything(cfg.seed)  # alike in every rank: DDP starts from rank 0's weights, the data order is shared
        shard = Shard(world.rank, world.size)

        def batches(split: str, batch_size: int, training: bool = False) -> Any:
            return make_batches(cfg.dataset, split, device, batch_size=batch_size, seed=cfg.seed,
                                training=training, loader=cfg.loader, num_workers=cfg.num_workers, shard=shard)

        train_batches = batches("train", cfg.batch_size // world.size, training=True)  # the global batch_size
        val_batches = batches("val", cfg.eval_batch_size)
        test_batches = batches("test", cfg.eval_batch_size)  # now: a missing test file is found before training
        cfg = resolve_compile(cfg, device, dtype, distributed=ranks.distributed)
        t = build_training(cfg, device, dtype, len(train_batches), distributed=ranks.distributed)
        state = resume_state(resumed, resume_from, t, train_batches) if resumed is not None else TrainState()
        runner = make_step(cfg.compile, t, train_batches, device=device, dtype=dtype,
                           skip_nonfinite=cfg.on_nan == "skip_batch")
    except UserError as exc:
        if resumed is None:
            raise
        raise ResumeRefused(str(exc)) from None
    trained_on = {"device": str(device), "precision": precision_name(dtype), "compile": cfg.compile}  # what auto chose
    title = f"{choices.get('model', '')} on {cfg.dataset.name}".strip()
    info = RunInfo(run.path, title, cfg.resolved, _hparams(cfg, choices), launch, resumed=resumed is not None)
    run.track(info, make_trackers(cfg.loggers, run.path) if world.main else Trackers(),
              int(resumed["epoch"]) if resumed is not None else 0)
    _log_start(cfg, choices, state, resume_from, run, launch, train_batches.num_samples, val_batches.num_samples,
               device, dtype, sum(p.numel() for p in t.model.parameters()))

    def checkpoint(status: str, in_progress: EpochStats | None = None) -> dict[str, Any]:
        return state.checkpoint(t, cfg, choices, status, in_progress=in_progress,
                                data_rng=train_batches.rng_state() if in_progress is not None else None)

    with StopRequest(stop_file) as stop:
        try:
            for train in train_epochs(runner, train_batches, state.epochs_done + 1, cfg.epochs, start=state.partial,
                                      data_rng=state.partial_data_rng, progress=progress,
                                      after_step=_step_hook(cfg, run, stop, checkpoint, ranks, t.optimizer,
                                                            len(train_batches)), ranks=ranks):
                if not train.completed:
                    run.save_last(checkpoint("interrupted", train))
                    raise _interrupted(stop, run, f"epoch {train.epoch} step {train.steps}")
                _check_skipped(cfg, run, train)
                if t.scheduler is not None and t.scheduler_interval == "epoch":
                    t.scheduler.step()
                val = evaluate(t.infer, val_batches, t.loss_fn, cfg.dataset.num_classes, device=device, dtype=dtype,
                               progress=progress, desc="validate", ranks=ranks)
                row = _history_row(train, val)
                improved = state.add_epoch(row)
                _log_epoch(cfg, row, improved)  # measured whatever happens to the files: said before they are written
                # best.pt before last.pt: a run killed between the two resumes from the older last.pt and
                # redoes this epoch, instead of trusting a last.pt whose best.pt was never written.
                if improved:
                    run.save_best(checkpoint("running"))
                run.save_last(checkpoint("running"))
                run.write_history(state.history, {**state.summary("running"), **trained_on})
                if ranks.any(bool(stop)):
                    raise _interrupted(stop, run, f"the end of epoch {train.epoch}")
        except NonFiniteLoss as exc:
            raise UserError(f"{exc}; {run.kept()}. Try a lower optimizer.lr, or on_nan=skip_batch") from None

    ranks.barrier()  # rank 0 has written best.pt
    best = run.load_best(device)
    t.model.load_state_dict(best["model"])
    # Under DDP each rank holds its block's probabilities only: the grid of mistakes is left out there.
    keep_probs = not ranks.distributed
    result = evaluate(t.model, test_batches, t.loss_fn, cfg.dataset.num_classes, device=device, dtype=dtype,
                      progress=progress, desc="test", tta=TTA(cfg.tta, cfg.dataset), keep_probs=keep_probs,
                      ranks=ranks)
    test = {**test_summary(result, list(cfg.dataset.classes), state.best_epoch), "tta": cfg.tta}
    # Figures first, "completed" last: a run whose artifacts were not all written never claims to be done.
    run.write_figures(state.history, result.confusion, list(cfg.dataset.classes), title, result.accuracy,
                      _mistakes(cfg, result) if keep_probs and world.main else None)
    best["metrics"].update(test=test, status="completed")
    run.save_best(best)
    summary = {**state.summary("completed"), **trained_on, "test": test, "seconds": time.perf_counter() - started}
    run.write_history(state.history, summary)
    run.finish("completed")
    return RunResult(run.path, state.best_epoch, state.best_val_acc, test, summary["seconds"])


HPARAM_KEYS = ("epochs", "batch_size", "seed", "precision", "tta", "optimizer.lr", "optimizer.weight_decay",
               "optimizer.momentum", "loss.label_smoothing")


def _hparams(cfg: TrainConfig, choices: dict[str, str]) -> dict[str, Any]:
    """What tells runs apart in a tracker's table: the config groups chosen and the usual knobs."""
    out: dict[str, Any] = {k: v for k, v in choices.items() if k in ("model", "dataset", "optimizer", "scheduler",
                                                                     "loss", "experiment")}
    for key in HPARAM_KEYS:
        value = lookup(cfg.resolved, key)
        if isinstance(value, bool | int | float | str):
            out[key] = value
    return out


def _mistakes(cfg: TrainConfig, result: EvalResult) -> Mistakes:
    assert result.probs is not None and result.labels is not None
    images, _ = load_split(cfg.dataset, "test", cfg.seed)
    return most_confident_mistakes(images, result.probs, result.labels)


def _step_hook(cfg: TrainConfig, run: RunDir, stop: StopRequest, checkpoint: Callable[..., dict[str, Any]],
               ranks: Collective, optimizer: Any,
               steps_per_epoch: int) -> Callable[[int, Callable[[], EpochStats]], bool]:
    """After each step: stop when a signal came (to any rank: all stop at this step); write last.pt every
    `checkpoint_every_steps` steps; give the trackers the scalars of the last steps every `every_steps`."""
    every = step_interval(cfg.loggers)
    since = EpochStats(0.0, 0, 0, 0.0, 0)  # the stats at the previous scalars, within the same epoch

    def after_step(step: int, snapshot: Callable[[], EpochStats]) -> bool:
        nonlocal since
        if ranks.any(bool(stop)):
            return True
        save = bool(cfg.checkpoint_every_steps) and step % cfg.checkpoint_every_steps == 0
        scalars = bool(every) and step % every == 0
        if not (save or scalars):
            return False
        now = snapshot()  # a host sync (and under DDP a collective: every rank takes the same branch)
        if not math.isfinite(now.loss_sum):  # never save diverged weights as the last good state
            raise NonFiniteLoss(now.epoch, step)
        if save:
            run.save_last(checkpoint("running", now))
        if scalars:
            if since.epoch != now.epoch or since.steps > now.steps:
                since = EpochStats(0.0, 0, 0, 0.0, 0, epoch=now.epoch)
            samples, seconds = now.samples - since.samples, now.seconds - since.seconds
            if samples > 0:
                run.log_step((now.epoch - 1) * steps_per_epoch + step, {
                    "loss": (now.loss_sum - since.loss_sum) / samples, "acc": (now.correct - since.correct) / samples,
                    "lr": optimizer.param_groups[0]["lr"], "samples_per_s": samples / seconds if seconds > 0 else 0.0})
            since = now
        return False

    return after_step


def _check_skipped(cfg: TrainConfig, run: RunDir, train: EpochStats) -> None:
    if not train.skipped:
        return
    log.warning("epoch %d: skipped %d batches with a NaN/inf loss (on_nan=skip_batch)", train.epoch, train.skipped)
    limit = cfg.skip_batch_limit
    if train.samples == 0 or train.skipped > limit * train.steps:
        raise UserError(f"epoch {train.epoch}: the training loss was NaN/inf in {train.skipped} of {train.steps} "
                        f"batches (more than skip_batch_limit={limit}); {run.kept()}. Try a lower optimizer.lr")


def _history_row(train: EpochStats, val: EvalResult) -> dict[str, Any]:
    """One epoch's line of metrics.csv / metrics.json."""
    return {"epoch": train.epoch, "train_loss": train.loss, "train_acc": train.accuracy, "val_loss": val.loss,
            "val_acc": val.accuracy, "lr": train.lr, "seconds": train.seconds + val.seconds,
            "samples_per_s": train.samples_per_s, "warmup_s": train.warmup_seconds}


def test_summary(result: EvalResult, class_names: list[str], epoch: int) -> dict[str, Any]:
    """What a checkpoint and metrics.json record of the test set (the report page shows it)."""
    report = class_report(result.confusion, class_names)
    return {
        "accuracy": result.accuracy,
        "loss": result.loss,
        "macro_f1": report["macro_f1"],
        "samples": result.samples,
        "epoch": epoch,
        "per_class_accuracy": {row["class"]: row["accuracy"] for row in report["classes"]},
        "classes": report["classes"],
        "confusion_matrix": result.confusion.tolist(),
    }


def _log_start(cfg: TrainConfig, choices: dict[str, str], state: TrainState, resume_from: Path | None, run: RunDir,
               launch: Launch, n_train: int, n_val: int, device: Any, dtype: Any, n_params: int) -> None:
    if resume_from is not None:
        steps = state.partial.steps if state.partial else 0
        log.info("resuming %s: %s", resume_from, position(state.epochs_done, steps))
    elif cfg.resume == "auto":  # as meant in a directory used again; in a new one it is easily misread
        # A sweep finished with resume=auto starts its jobs that never ran: that is what it was asked to do
        hint = "" if launch.sweep_dir is not None else " (to continue one: resume=RUN_DIR)"
        log.info("resume=auto: no %s in %s, so a new run starts%s", LAST, run.path, hint)
    log.info("%s: %d train / %d val images | model %s (%s parameters) | optimizer %s lr %g | %s %s | loader %s%s",
             cfg.dataset.name, n_train, n_val, choices.get("model", "?"), f"{n_params:,}",
             choices.get("optimizer", "?"), cfg.optimizer["lr"], device, str(dtype).removeprefix("torch."),
             cfg.loader, "" if cfg.compile == "none" else f" | compile {cfg.compile}")
    log.info("run directory: %s", run.path)
    if cfg.batch_size > n_train:  # legal, and what a DataLoader does, but rarely what was meant
        log.warning("batch_size=%d is more than the %d training images: every epoch is one step of %d", cfg.batch_size,
                    n_train, n_train)


def _log_epoch(cfg: TrainConfig, row: dict[str, Any], improved: bool) -> None:
    warmup = f" (incl. {row['warmup_s']:.1f}s one-time {cfg.compile} warm-up)" if row["warmup_s"] else ""
    log.info("epoch %d/%d | train loss %.4f acc %.2f%% | val loss %.4f acc %.2f%%%s | lr %.2e | %.1fs%s | "
             "%s samples/s", row["epoch"], cfg.epochs, row["train_loss"], 100 * row["train_acc"], row["val_loss"],
             100 * row["val_acc"], " *" if improved else "", row["lr"], row["seconds"], warmup,
             f"{row['samples_per_s']:,.0f}")


def _interrupted(stop: StopRequest, run: RunDir, where: str) -> Interrupted:
    by = stop.name or "a signal to another rank"
    again = shlex.join(["fmnist-train", quoted_override("hydra.run.dir", str(run.path)), "resume=auto"])
    return Interrupted(f"stopped by {by} at {where}; saved {run.last}. Resume with: {again}", stop.signum or 2)
