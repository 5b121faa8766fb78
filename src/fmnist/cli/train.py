"""fmnist-train: compose the config with Hydra, train, report where the artifacts are."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fmnist.cli.common import hydra_app, report_user_errors
from fmnist.config import validate
from fmnist.errors import UserError
from fmnist.interrupt import Interrupted
from fmnist.metrics import record_status
from fmnist.runtime import configure_threads
from fmnist.sweep import sweeper_wants_exceptions, write_summary
from fmnist.train import run_training

log = logging.getLogger("fmnist")


@hydra_app("fmnist-train", "train")
def main(cfg: DictConfig) -> float:
    """Train one configuration; returns the best validation accuracy (the objective for sweepers)."""
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra") and v}

    def train() -> float:
        validate(cfg)  # before anything acts on a value (threads=abc must not be applied first)
        threads = configure_threads(cfg.get("threads", "auto"), _parallel_jobs(hydra_cfg))
        log.info("cpu threads %d", threads)
        result = run_training(cfg, out_dir, choices)
        log.info("test accuracy %.2f%% (best epoch %d, val %.2f%%) | artifacts in %s",
                 100 * result.test["accuracy"], result.best_epoch, 100 * result.best_val_acc, result.out_dir)
        return result.best_val_acc

    if hydra_cfg.mode != RunMode.MULTIRUN:
        return report_user_errors("fmnist-train", train)
    # In a sweep one bad job must not stop the others: record why it failed, then tell the sweeper in the
    # way it understands (sweeper_wants_exceptions). run_training has recorded a UserError already.
    try:
        return train()
    except Interrupted as exc:  # Ctrl-C stops the whole sweep, not just this job: summarise what finished
        print(f"fmnist-train: {exc}", file=sys.stderr)
        write_summary(Path(hydra_cfg.sweep.dir))
        raise SystemExit(exc.exit_code) from None
    except UserError as exc:
        message, error = str(exc), exc
    except Exception as exc:  # a bug: keep the traceback in the job's log, still record and go on
        log.exception("job failed")
        message, error = f"{type(exc).__name__}: {exc}", exc
        record_status(out_dir, "failed", message)
    log.error("job %s failed: %s", hydra_cfg.job.num, message)
    if sweeper_wants_exceptions(hydra_cfg):
        raise error
    return math.nan


def _parallel_jobs(hydra_cfg: DictConfig) -> int:
    """How many jobs run side by side (the joblib launcher's n_jobs), so threads can be shared."""
    launcher = hydra_cfg.get("launcher") or {}
    if hydra_cfg.mode != RunMode.MULTIRUN or "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n_jobs = int(launcher.get("n_jobs", 1) or 1)
    return (os.cpu_count() or 1) if n_jobs < 0 else n_jobs


if __name__ == "__main__":
    main()
