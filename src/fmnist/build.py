"""From config to objects: model, loss, optimizer and scheduler, all through Hydra's `_target_`.

Instantiation errors (a bad keyword, an impossible value torch rejects) become UserErrors naming the
config group, so a typo in an override reads as a config problem, not a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fmnist.engine import GraphedStep, make_step_runner
from fmnist.errors import UserError
from fmnist.loaders import Batches
from fmnist.models import Classifier

FUSED = {"torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD"}
CAPTURABLE = {"torch.optim.Adam", "torch.optim.AdamW", "torch.optim.RMSprop"}

# Losses that take log-probabilities rather than logits: the model then ends in log-softmax.
LOG_PROB_LOSSES = {"torch.nn.NLLLoss", "torch.nn.modules.loss.NLLLoss"}


def _make(group: str, node: DictConfig, *args: Any, **kwargs: Any) -> Any:
    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise UserError(f"{group}: {' '.join(str(cause).split())}") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{group}: {' '.join(str(exc).split())}") from None


def build_model(cfg: DictConfig) -> Classifier:
    """The model named by cfg.model, sized from cfg.dataset, with the output the loss expects."""
    log_probs = cfg.loss.get("_target_") in LOG_PROB_LOSSES
    return _make("model", cfg.model, log_probs=log_probs)


def build_loss(cfg: DictConfig) -> nn.Module:
    return _make("loss", cfg.loss)


def build_optimizer(cfg: DictConfig, params: Iterable[nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """cfg.optimizer over the parameters, with the fused kernels where the optimizer has them.

    Fused is no shortcut for speed tests only: on this project's 2-core CPU it trains the mlp 24% and the
    feedforward net 68% faster (scripts/bench.py). With compile=cudagraph the state is made capturable.
    """
    factory: Callable[..., torch.optim.Optimizer] = _make("optimizer", cfg.optimizer)
    target = cfg.optimizer.get("_target_")
    extra: dict[str, Any] = {}
    if device.type in ("cpu", "cuda") and target in FUSED:
        extra["fused"] = True
    if device.type == "cuda" and cfg.get("compile") == "cudagraph" and target in CAPTURABLE:
        extra["capturable"] = True
    try:
        return factory(params, **extra)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"optimizer: {' '.join(str(exc).split())}") from None


def use_channels_last(model: nn.Module, device: torch.device, setting: bool | str) -> bool:
    """Whether conv layers should run in channels-last memory format.

    auto: on CUDA for any conv model (tensor cores want NHWC); on the CPU only when every conv is at least
    16 channels wide: measured there, the 32-64-128 cnn trains 25% faster, the 4-4 bn_cnn 40% slower.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if setting != "auto":
        return bool(setting) and bool(convs)
    if not convs:
        return False
    return device.type == "cuda" or min(c.out_channels for c in convs) >= 16


@dataclass
class Training:
    """What the training loop needs besides the data: `net` is what the loop calls (torch.compile'd for
    compile=torch), `model` the plain module whose weights checkpoints keep."""

    model: Classifier
    net: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    runner: GraphedStep | None  # compile=cudagraph


def build_training(cfg: DictConfig, batches: Batches, device: torch.device, dtype: torch.dtype) -> Training:
    """Model (memory format, compile mode), loss, optimizer and step runner as the config asks.

    fmnist-train and scripts/bench.py both build through here, so the benchmark measures what users run.
    """
    model = build_model(cfg).to(device)
    if use_channels_last(model, device, cfg.get("channels_last", "auto")):
        model = model.to(memory_format=torch.channels_last)
    compile_mode = cfg.get("compile", "none")
    net = torch.compile(model) if compile_mode == "torch" else model
    loss_fn = build_loss(cfg).to(device)
    optimizer = build_optimizer(cfg, model.parameters(), device)
    runner = make_step_runner(compile_mode, net, loss_fn, optimizer, batches, device=device, dtype=dtype)
    return Training(model, net, loss_fn, optimizer, runner)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
                    ) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, str]:
    """The scheduler and whether it steps per `epoch` or per `step` (batch)."""
    node = OmegaConf.to_container(cfg.scheduler, resolve=True)
    assert isinstance(node, dict)
    interval = node.pop("interval", "epoch")
    if "_target_" not in node:
        return None, interval
    if node.get("steps_per_epoch") == "???":
        node["steps_per_epoch"] = steps_per_epoch
    return _make("scheduler", OmegaConf.create(node), optimizer), interval


def check_weights_fit(cfg: DictConfig, weights: dict[str, torch.Tensor], source: str) -> None:
    """The config's model has exactly the stored weights' names and shapes, checked on the meta device.

    A crafted config could ask for a model of any size; sizing it without memory first means the model
    built for real is never larger than the weights the file actually holds.
    """
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in weights.items()}
    if shapes != stored:
        differ = sorted(set(shapes) ^ set(stored)) or [k for k in shapes if shapes[k] != stored[k]]
        raise UserError(f"{source}: the stored weights do not fit its model config (first difference: "
                        f"{differ[0][:80]})")


def model_from_checkpoint(ckpt: dict[str, Any], cfg: DictConfig, device: torch.device) -> Classifier:
    """The trained model, rebuilt from the (allowlisted) config stored in its checkpoint."""
    check_weights_fit(cfg, ckpt["model"], "the checkpoint")
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(f"the checkpoint's weights do not fit its model config: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval()
