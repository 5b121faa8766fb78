"""fmnist-eval: overall and per-class accuracy of a checkpoint, with its confusion matrix."""

from __future__ import annotations

from omegaconf import DictConfig

from fmnist.cli.common import check_inputs, hydra_app, report_user_errors
from fmnist.config import eval_config


@hydra_app("fmnist-eval", "eval", check=lambda cfg: check_inputs(eval_config(cfg)), check_job=eval_config)
def main(cfg: DictConfig) -> float:
    """Returns the accuracy, so `--multirun` over checkpoints or splits can compare them."""
    from fmnist.inference.evaluation import run_eval  # torch: only once there is work to do

    return report_user_errors("fmnist-eval", lambda: run_eval(eval_config(cfg))["accuracy"])


if __name__ == "__main__":
    main()
