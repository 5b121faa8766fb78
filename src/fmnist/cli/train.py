"""fmnist-train: compose the config with Hydra, train, report where the artifacts are."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fmnist.cli.common import report_user_errors
from fmnist.config import CONFIG_DIR
from fmnist.train import run_training

log = logging.getLogger("fmnist")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Train one configuration; returns the best validation accuracy (the objective for sweepers)."""
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra") and v}

    def train() -> float:
        result = run_training(cfg, out_dir, choices)
        log.info("test accuracy %.2f%% (best epoch %d, val %.2f%%) | artifacts in %s",
                 100 * result.test["accuracy"], result.best_epoch, 100 * result.best_val_acc, out_dir)
        return result.best_val_acc

    return report_user_errors("fmnist-train", train)


if __name__ == "__main__":
    main()
