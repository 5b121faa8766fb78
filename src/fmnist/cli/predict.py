"""fmnist-predict: a random test image (or your own), its predicted class, and a picture of it."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fmnist.cli.common import check_inputs, hydra_app, report_user_errors
from fmnist.config import predict_config


@hydra_app("fmnist-predict", "predict", check=lambda cfg: check_inputs(predict_config(cfg)), check_job=predict_config)
def main(cfg: DictConfig) -> str:
    """Returns the predicted class name."""
    from fmnist.inference.prediction import run_predict  # torch: only once there is work to do

    hydra_cfg = HydraConfig.get()
    # In a sweep each job writes its picture into its own job directory instead of one shared file.
    job_dir = Path(hydra_cfg.runtime.output_dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    return report_user_errors("fmnist-predict", lambda: run_predict(predict_config(cfg), job_dir)["predicted"])


if __name__ == "__main__":
    main()
