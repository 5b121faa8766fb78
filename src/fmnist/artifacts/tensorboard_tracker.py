"""logger=tensorboard: event files that `tensorboard --logdir` reads (pip install 'fmnist[tensorboard]').

Scalars under `step/` (every `every_steps` training steps) and `epoch/` (each epoch), the command and the
config as text, the hyperparameters with the final metrics (the HParams tab), and the run's figures as
images. A resumed run appends to the same directory; TensorBoard drops the points after the step it
resumed from (they are superseded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from fmnist.artifacts.tracking import EPOCH_SCALARS, RunInfo
from fmnist.config import lookup
from fmnist.paths import user_path

FINAL_METRICS = {"hparam/test_acc": "test.accuracy", "hparam/test_loss": "test.loss",
                 "hparam/best_val_acc": "best_val_acc"}


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, settings: dict[str, Any], run_dir: Path) -> None:
        self.log_dir = user_path(settings["log_dir"]) if settings.get("log_dir") else run_dir / "tensorboard"
        self.writer: SummaryWriter | None = None
        self.hparams: dict[str, Any] = {}

    def start(self, info: RunInfo) -> None:
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.hparams = info.hparams
        self.writer.add_text("run/command", f"`{info.command}`")
        config = "\n".join(f"    {k}: {v}" for k, v in info.params.items())  # indented: shown as code
        self.writer.add_text("run/config", config)

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        assert self.writer is not None
        for key, value in scalars.items():
            self.writer.add_scalar(f"step/{key}", value, step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        assert self.writer is not None
        for key in EPOCH_SCALARS:
            if isinstance(row.get(key), int | float):
                self.writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
        self.writer.flush()

    def finish(self, status: str, summary: dict[str, Any], files: list[Path]) -> None:
        if self.writer is None:
            return
        try:
            metrics = {name: lookup(summary, key) for name, key in FINAL_METRICS.items()}
            metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
            if metrics:  # one event file: the HParams entries go where the scalars are
                writer = self.writer._get_file_writer()
                for entry in hparams({**self.hparams, "status": status}, metrics):
                    writer.add_summary(entry)
                for key, value in metrics.items():
                    self.writer.add_scalar(key, value)
            for path in files:
                if path.suffix == ".png" and path.is_file():
                    self.writer.add_image(f"figures/{path.stem}", _read_png(path), dataformats="CHW")
        finally:
            self.writer.close()
            self.writer = None


def _read_png(path: Path) -> Any:
    """(3, H, W) uint8: the figure as TensorBoard shows images."""
    from torchvision.io import ImageReadMode, decode_png, read_file

    return decode_png(read_file(str(path)), mode=ImageReadMode.RGB)
