"""fmnist-train: compose the config with Hydra, train, report where the artifacts are.

torch and the training code are imported when a run starts, not before: --help, --cfg and a rejected
config answer without them.

Under torchrun (`torchrun --nproc_per_node=N --no-python fmnist-train ...`) every rank runs this entry point:
the ranks join one process group before Hydra starts, so that they resolve one run directory, and only
rank 0 logs at info level and writes files.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import shlex
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fmnist.artifacts.rundir import resume_source
from fmnist.cli.common import end_worker_without_teardown, hydra_app, override_parts, report_user_errors
from fmnist.config import TrainConfig, check_world, train_config, usable_cores
from fmnist.data.layout import find_data
from fmnist.paths import sweep_dir
from fmnist.world import current_world

log = logging.getLogger("fmnist")


def checked(cfg: DictConfig) -> TrainConfig:
    """The validated settings, for as many processes as this run has."""
    return check_world(train_config(cfg), current_world())


def checked_before_run(cfg: DictConfig) -> TrainConfig:
    """A single run's settings, checked before Hydra makes its run directory, and its data found (or fetched):
    a run without its data or the device it names, or resumed from a checkpoint that is not there, is refused
    in one line and leaves nothing behind. A resumed run checks its checkpoint's dataset once it has read it."""
    settings = checked(cfg)
    if settings.device not in ("auto", "cpu") or settings.precision == "fp16" or settings.compile == "cudagraph":
        from fmnist.runtime import check_machine

        check_machine(settings.device, settings.precision, settings.compile)
    if settings.resume is None:
        find_data(settings.dataset)
    elif settings.resume != "auto":  # auto looks in the run directory, which Hydra has yet to name
        resume_source(settings.resume, Path.cwd())
    return settings


def join_world() -> None:
    """Join the other ranks of a distributed run (a no-op for one process)."""
    world = current_world()
    if world.launched:
        from fmnist.train.distributed import join

        join(world)


def quiet_follower() -> None:
    """A rank other than 0: warnings and errors on the console only, no log file of its own."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    log.setLevel(logging.WARNING)


def sleeping_threads(overrides: list[str]) -> bool:
    """OpenMP's threads sleep while they wait only where the thread count is fixed (`threads=N`): with
    threads=auto (the default; no preset sets it) they spin, which is fastest alone, and the run steps down to
    the cores other processes leave free, where nothing spins (cpu_share.py)."""
    values = [value for key, value in map(override_parts, overrides) if key == "threads"]
    return bool(values) and values[-1] != "auto"


@hydra_app("fmnist-train", "train", check=checked_before_run, before_run=join_world, sleeping_threads=sleeping_threads)
def main(cfg: DictConfig) -> float:
    """Train one configuration; returns the best validation accuracy (the objective for sweepers)."""
    from fmnist.artifacts.sweep import (
        leave_ctrl_c_to_the_sweep,
        parallel_jobs,
        refresh_after_rerun,
        run_job,
        stop_file,
    )

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    pooled = multirun and multiprocessing.parent_process() is not None  # in a worker of a parallel sweep
    if pooled:
        leave_ctrl_c_to_the_sweep()  # first: importing torch takes seconds
        end_worker_without_teardown()

    from fmnist.artifacts.tracking import Launch
    from fmnist.cpu_share import SHARE
    from fmnist.runtime import configure_threads
    from fmnist.train.run import run_training

    world = current_world()
    join_world()  # done already under torchrun; the tasks of a SLURM job (hydra/launcher=slurm) join here
    if not world.main:
        quiet_follower()

    out_dir = Path(hydra_cfg.runtime.output_dir)
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra") and v}
    jobs = parallel_jobs(hydra_cfg.get("launcher") or {}) if multirun else 1
    # The command that reproduces this run: a sweep job's own overrides, or the command line as typed.
    launch = Launch(shlex.join(["fmnist-train", *hydra_cfg.overrides.task]), sweep_dir(hydra_cfg),
                    hydra_cfg.job.num) if multirun else Launch(shlex.join(["fmnist-train", *sys.argv[1:]]))

    def train() -> float:
        settings = checked(cfg)  # validated before anything acts on a value
        if pooled and settings.progress == "auto":  # jobs side by side would draw their bars over each other:
            settings = dataclasses.replace(settings, progress=False)  # plain progress lines every ~30 s instead
        side_by_side = jobs * world.local_size  # sweep jobs, or this machine's ranks
        threads = configure_threads(settings.threads, side_by_side, lockstep=world.local_size > 1)
        following = ""  # not following the CPU: a fixed count, one core, or no /proc/stat to read
        if SHARE.most > threads:
            following = f", up to {SHARE.most} while other processes leave cores free"
        elif SHARE.most:
            following = ", fewer while other processes use the cores"
        log.info("cpu threads %d (threads=%s, %d usable cores, %d process%s side by side, OMP_WAIT_POLICY=%s%s)",
                 threads, settings.threads, usable_cores(), side_by_side, "es" if side_by_side > 1 else "",
                 os.environ.get("OMP_WAIT_POLICY", "default"), following)
        if world.launched:
            log.info("distributed: %d processes, global batch %d = %d per process", world.size,
                     settings.batch_size, settings.batch_size // world.size)
        named = frozenset(key for key, _ in map(override_parts, hydra_cfg.overrides.task))
        result = run_training(settings, out_dir, choices, world, launch,
                              stop_file=stop_file(sweep_dir(hydra_cfg)) if pooled else None, named=named)
        log.info("test accuracy %.2f%% (best epoch %d, val %.2f%%) | artifacts in %s",
                 100 * result.test["accuracy"], result.best_epoch, 100 * result.best_val_acc, result.out_dir)
        if not multirun and world.main:
            refresh_after_rerun(result.out_dir)
        return result.best_val_acc

    if not multirun:
        return report_user_errors("fmnist-train", train)
    return run_job(train, out_dir, sweep_dir(hydra_cfg), hydra_cfg.job.num,
                   str(hydra_cfg.sweeper.get("_target_", "")), pooled=pooled)


if __name__ == "__main__":
    main()
