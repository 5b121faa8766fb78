"""fmnist-train: compose the config with Hydra, train, report where the artifacts are.

torch and the training code are imported when a run starts, not before: --help, --cfg and a rejected
config answer without them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fmnist.cli.common import hydra_app, report_user_errors
from fmnist.config import train_config, usable_cores

log = logging.getLogger("fmnist")


@hydra_app("fmnist-train", "train", check=train_config)
def main(cfg: DictConfig) -> float:
    """Train one configuration; returns the best validation accuracy (the objective for sweepers)."""
    from fmnist.artifacts.sweep import parallel_jobs, run_job
    from fmnist.runtime import configure_threads
    from fmnist.train.run import run_training

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra") and v}
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    launcher = hydra_cfg.get("launcher") or {}

    def train() -> float:
        settings = train_config(cfg)  # validated before anything acts on a value
        jobs = parallel_jobs(str(launcher.get("_target_", "")), launcher.get("n_jobs")) if multirun else 1
        threads = configure_threads(settings.threads, jobs)
        log.info("cpu threads %d (threads=%s, %d usable cores, %d job%s side by side, OMP_WAIT_POLICY=%s)", threads,
                 settings.threads, usable_cores(), jobs, "s" if jobs > 1 else "", os.environ.get("OMP_WAIT_POLICY"))
        result = run_training(settings, out_dir, choices)
        log.info("test accuracy %.2f%% (best epoch %d, val %.2f%%) | artifacts in %s",
                 100 * result.test["accuracy"], result.best_epoch, 100 * result.best_val_acc, result.out_dir)
        return result.best_val_acc

    if not multirun:
        return report_user_errors("fmnist-train", train)
    return run_job(train, out_dir, Path(hydra_cfg.sweep.dir), hydra_cfg.job.num,
                   str(hydra_cfg.sweeper.get("_target_", "")))


if __name__ == "__main__":
    main()
