"""fmnist-eval: overall and per-class accuracy of a checkpoint, with its confusion matrix."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fmnist.cli.common import report_user_errors
from fmnist.config import CONFIG_DIR
from fmnist.evaluation import run_eval


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> float:
    """Returns the accuracy, so `--multirun` over checkpoints or splits can compare them."""
    return report_user_errors("fmnist-eval", lambda: run_eval(cfg)["accuracy"])


if __name__ == "__main__":
    main()
