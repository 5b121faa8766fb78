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
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fmnist.artifacts.rundir import LAST, RunDir, resume_source
from fmnist.artifacts.tracking import check_servers
from fmnist.cli.callbacks import finishing_command
from fmnist.cli.common import (
    end_worker_without_teardown,
    hydra_app,
    report_user_errors,
    typed_args,
    typed_dir,
)
from fmnist.cli.overrides import app_groups, on_a_cluster, override_parts
from fmnist.config import TrainConfig, check_world, train_config, usable_cores
from fmnist.data.layout import check_described, find_data
from fmnist.errors import UserError
from fmnist.paths import quoted_override, sweep_dir
from fmnist.world import current_world

log = logging.getLogger("fmnist")


def checked(cfg: DictConfig) -> TrainConfig:
    """The validated settings, for as many processes as this run has."""
    settings = check_world(train_config(cfg), current_world())
    check_described(settings.dataset)
    check_servers(settings.loggers)
    return settings


def checked_sweep_job(cfg: DictConfig) -> TrainConfig:
    """A sweep's job, checked before the sweep starts: its data found too (or fetched once, here), which each job
    would otherwise have found missing as it started, after the sweep's folder. Not where a cluster runs the
    jobs: its nodes may hold data that the machine submitting them does not."""
    settings = checked(cfg)
    if not on_a_cluster(typed_args()):
        find_data(settings.dataset)
    return settings


def checked_before_run(cfg: DictConfig) -> TrainConfig:
    """A single run's settings, checked before Hydra makes its run directory, and its data found (or fetched):
    a run without its data or the device it names, with a setting only torch refuses (try_config), or resumed
    from a checkpoint that is not there, is refused in one line and leaves nothing behind. A resumed run checks
    its checkpoint's config and dataset once it has read it; a sweep's job checks its own as it starts."""
    settings = checked(cfg)
    if settings.device not in ("auto", "cpu") or settings.precision == "fp16" or settings.compile == "cudagraph":
        from fmnist.runtime import check_machine

        check_machine(settings.device, settings.precision, settings.compile)
    if settings.resume is None:
        find_data(settings.dataset)
        from fmnist.train.setup import try_config  # torch, which the run imports next anyway

        try_config(settings)
    elif settings.resume != "auto":  # auto looks in the run directory, which Hydra has yet to name
        resume_source(settings.resume, Path.cwd())
    return settings


def placed(settings: TrainConfig, overrides: list[str]) -> list[str]:
    """Where Hydra is to write a single run's log and `.hydra/`: decided before Hydra writes them, into a
    directory that may hold another run.

    A directory that another process trains in, or that holds a run this one was not asked to resume, is
    refused here, as is a resume its checkpoint refuses (`_check_resume`): by the time the run itself refused
    either, Hydra had appended to that run's train.log and replaced its `.hydra/` record with this command's.
    A resumed run goes on in its checkpoint's directory: `resume=RUN` puts Hydra there too (its log went to a
    new directory under outputs/, apart from the run's), and `.hydra/` keeps the config the run was begun with,
    where Hydra would write the resume command's (whose defaults, say model=cnn, are not what the run trains)."""
    typed = typed_dir(overrides)
    if typed is not None and "${" in typed:  # resolved only by Hydra: the run checks it when it claims it
        return []
    if settings.resume not in (None, "auto"):
        source = resume_source(settings.resume, Path.cwd())
        assert source is not None
        run_dir = source.parent
        if typed is not None and Path(typed).absolute() != run_dir.absolute():
            raise UserError(f"resume={settings.resume} continues the run in {run_dir}, not in hydra.run.dir="
                            f"{typed}: drop hydra.run.dir, or copy the checkpoint into {typed} to branch "
                            f"from it there")
    elif typed is not None:
        run_dir = Path(typed)
        source = run_dir / LAST  # what resume=auto continues, if it is there
    else:
        return []  # a new directory of Hydra's naming
    resuming = settings.resume is not None and (settings.resume != "auto" or source.is_file())
    if run_dir.is_dir():
        RunDir(run_dir).check_free(resuming=settings.resume is not None)
    if not resuming:
        return []
    _check_resume(source, settings, overrides)
    here = [] if typed is not None or "${" in str(run_dir) else [quoted_override("hydra.run.dir", str(run_dir))]
    return [*here, "hydra.output_subdir=null"]


def _check_resume(source: Path, settings: TrainConfig, overrides: list[str]) -> None:
    """What the run checks once it has read its checkpoint (a setting the resume cannot change, a checkpoint
    behind the run's last.pt, a class not trusted), checked here too: refused, the command prints one line and
    the run's files stay as they were. The run checks again under its directory's lock."""
    from fmnist.artifacts.checkpoint import load_checkpoint  # torch, which the run imports next anyway
    from fmnist.train.state import check_not_behind, resumed_config

    parts = [override_parts(o) for o in overrides]
    groups = app_groups("train")
    ckpt = load_checkpoint(source)
    check_not_behind(ckpt, source, source.parent / LAST)
    check_world(resumed_config(ckpt, source, settings, frozenset(key for key, _ in parts),
                               {key: value for key, value in parts if key in groups}), current_world())


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


@hydra_app("fmnist-train", "train", check=checked_before_run, check_job=checked_sweep_job, before_run=join_world,
           sleeping_threads=sleeping_threads, place=placed)
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
                    hydra_cfg.job.num) if multirun else Launch(shlex.join(["fmnist-train", *typed_args()]))

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
        if threads * side_by_side > usable_cores():  # only a fixed count can: auto divides the cores
            log.warning("threads=%d x %d process%s side by side is more threads than the %d usable cores: they "
                        "take turns on the cores and each step slows down (threads=auto fits them to the cores)",
                        threads, side_by_side, "es" if side_by_side > 1 else "", usable_cores())
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
                   str(hydra_cfg.sweeper.get("_target_", "")), pooled=pooled,
                   again=lambda: finishing_command(sweep_dir(hydra_cfg)))


if __name__ == "__main__":
    main()
