"""Step runners: what one training step on one batch does, eagerly or replayed as a CUDA graph.

The epoch loop only iterates and counts; a runner does forward, backward and the optimizer step, and keeps
the running loss and correct-prediction sums on the device (read back only when the loop asks), so a
GPU is never stalled by a per-batch `.item()`. A new way to run a step (another capture mechanism, a
distributed wrapper) is a new runner, not a new branch in the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch

from fmnist.config import TrainConfig, cudagraph_obstacle
from fmnist.data.batches import Batches, TensorBatches
from fmnist.runtime import autocast, require_cuda
from fmnist.train.setup import Training


class EagerStep:
    """One optimizer step per batch, as written (or through torch.compile's module: `training.net`).

    With `skip_nonfinite` a batch whose loss is NaN/inf gets no optimizer step (one host sync per batch).
    The first `warmup_steps` steps this runner takes (compilation) are timed apart by the loop.
    """

    def __init__(self, training: Training, *, device: torch.device, dtype: torch.dtype,
                 skip_nonfinite: bool = False, warmup_steps: int = 0) -> None:
        self.net, self.loss_fn, self.optimizer = training.net, training.loss_fn, training.optimizer
        self.scaler = training.scaler
        self.scheduler_step: Callable[[], Any] | None = (
            training.scheduler.step if training.scheduler is not None and training.scheduler_interval == "step"
            else None)
        self.device, self.dtype = device, dtype
        self.skip_nonfinite, self.warmup_steps = skip_nonfinite, warmup_steps
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.skipped = 0
        self.calls = 0

    def begin(self, loss_sum: float, correct: int, skipped: int) -> None:
        """Start an epoch's sums (a resumed epoch carries its earlier sums on)."""
        self.loss_sum.fill_(loss_sum)
        self.correct.fill_(correct)
        self.skipped = skipped

    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss_sum, self.correct

    def batches_from(self, batches: Batches, step: int) -> Iterator[Any]:
        return batches.iter_from(step)

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        """One optimizer step; returns the samples it counted (0 for a skipped batch)."""
        self.calls += 1
        counted = self._train(*batch)
        if self.scheduler_step is not None:
            self.scheduler_step()
        return counted

    def _train(self, x: torch.Tensor, y: torch.Tensor) -> int:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with autocast(self.device, self.dtype):
            out = self.net(x)
            loss = self.loss_fn(out.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.skip_nonfinite and not torch.isfinite(loss):
            self.skipped += 1
            return 0
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.loss_sum.add_(loss.detach(), alpha=len(y))
        self.correct.add_((out.detach().argmax(1) == y).sum())
        return len(y)


class GraphedStep:
    """The whole training step for one full batch, captured once as a CUDA graph and replayed.

    Static buffers: the batch's indices (copied in before each replay) and the running loss/correct sums.
    The data are already on the device (TensorBatches), so a replay does gather, normalise, augment,
    forward, backward and the optimizer step with no host work beyond one index copy. The first
    `warmup_steps` calls run eagerly on a side stream (as CUDA graphs require), then the step is captured.
    A last partial batch runs through `eager`; inside or outside the graph, augmentation draws from the
    device's default generator.
    """

    def __init__(self, eager: EagerStep, batches: TensorBatches) -> None:
        self.eager, self.batches = eager, batches
        self.net, self.optimizer, self.device, self.dtype = eager.net, eager.optimizer, eager.device, eager.dtype
        self.warmup_steps = 3
        self.batch_size = batches.batch_size
        self.idx = torch.zeros(self.batch_size, dtype=torch.int64, device=self.device)
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    @property
    def skipped(self) -> int:
        return self.eager.skipped

    def begin(self, loss_sum: float, correct: int, skipped: int) -> None:
        self.eager.begin(loss_sum, correct, skipped)
        self.loss_sum.zero_()
        self.correct.zero_()

    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.eager.loss_sum + self.loss_sum, self.eager.correct + self.correct

    def batches_from(self, batches: Batches, step: int) -> Iterator[torch.Tensor]:
        """Index batches: the captured gather reads the data it was captured with, so it must be these."""
        if batches is not self.batches:
            raise ValueError("a GraphedStep replays the batches it was built for")
        return self.batches.index_batches(step)

    def __call__(self, idx: torch.Tensor) -> int:
        self.calls += 1
        if len(idx) != self.batch_size:
            return self.eager(self.batches.gather(idx, None))
        self.idx.copy_(idx, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            return self.batch_size
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            self._body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self.calls == self.warmup_steps:
            # The captured backward writes fresh gradients each replay: start capture from no gradients.
            # Capture records the kernels without running them, so this batch is not trained twice.
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
            self.graph = graph
        return self.batch_size

    def _body(self) -> None:
        x, y = self.batches.gather(self.idx, None)
        with autocast(self.device, self.dtype, cache=False):
            out = self.net(x)
            loss = self.eager.loss_fn(out.float(), y)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach() * self.batch_size
        self.correct += (out.detach().argmax(1) == y).sum()


StepRunner = EagerStep | GraphedStep


def resolve_compile(cfg: TrainConfig, device: torch.device, dtype: torch.dtype, *, distributed: bool = False
                    ) -> TrainConfig:
    """cfg with compile=auto made concrete for this device: the captured step wherever it can train the run (on
    an H200 it trained the cnn 5.7x faster than the eager loop at batch 64, to the same weights:
    docs/benchmarks.md), the eager loop everywhere else. A checkpoint keeps `auto` (cfg.resolved), so a run
    resumed on another device chooses again."""
    if cfg.compile != "auto":
        return cfg
    captured = device.type == "cuda" and not distributed and dtype is not torch.float16 and cudagraph_obstacle(
        scheduled=bool(cfg.scheduler.get("_target_")), on_nan=cfg.on_nan, precision=cfg.precision, loader=cfg.loader,
        device=cfg.device) is None
    return replace(cfg, compile="cudagraph" if captured else "none")


def make_step(compile_mode: str, training: Training, batches: Batches, *, device: torch.device,
              dtype: torch.dtype, skip_nonfinite: bool = False) -> StepRunner:
    """The runner compile_mode asks for: eager (none, torch) or the captured step (cudagraph)."""
    eager = EagerStep(training, device=device, dtype=dtype, skip_nonfinite=skip_nonfinite,
                      warmup_steps=1 if compile_mode == "torch" else 0)
    if compile_mode != "cudagraph":
        return eager
    require_cuda("compile=cudagraph", device, "compile=none or compile=torch")
    assert isinstance(batches, TensorBatches), "config validation requires data.loader=tensor for cudagraph"
    return GraphedStep(eager, batches)
