"""Hydra callbacks (named in conf/train.yaml): the sweep summary and page, kept current while a --multirun
runs; at its end, the sweep's parent run in MLflow is closed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig


class SummaryCallback(Callback):
    """Rewrites the sweep summary after every job and reports it when the --multirun ends.

    Exits with code 1 at the end if any job failed, so scripts notice.
    """

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            from fmnist.artifacts.sweep import write_summary

            write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from fmnist.artifacts.sweep import close_trackers, report

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        failed = report(sweep_dir)
        close_trackers(sweep_dir, failed > 0)
        if failed:
            sys.exit(1)
