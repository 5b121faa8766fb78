"""From config to objects: model, loss, optimizer and scheduler, all through Hydra's `_target_`; and the
one way back from a checkpoint's stored config to a config that may be built.

Instantiation errors (a bad keyword, an impossible value torch rejects) become UserErrors naming the
config group, so a typo in an override reads as a config problem, not a crash.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fmnist.artifacts.allowlist import check_stored_config, shipped_targets
from fmnist.config import TrainConfig, stored_train_config
from fmnist.errors import UserError, one_line
from fmnist.models import Classifier
from fmnist.runtime import free_memory, in_hardware, precision_name, resolve_precision

log = logging.getLogger("fmnist")

FUSED = {"torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD"}
CAPTURABLE = {"torch.optim.Adam", "torch.optim.AdamW", "torch.optim.RMSprop"}

# Losses that take log-probabilities rather than logits: the model then ends in log-softmax.
LOG_PROB_LOSSES = {"torch.nn.NLLLoss", "torch.nn.modules.loss.NLLLoss"}


def _make(group: str, node: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, ImportError) and cause.__cause__ is not None:  # Hydra's three lines around the import's
            raise _cannot_import(group, node.get("_target_"), cause.__cause__) from None
        if isinstance(cause, UserError):  # fmnist's own model, which names the key itself
            raise UserError(str(cause)) from None
        raise UserError(f"{group}: {one_line(cause, 400)}") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{group}: {one_line(exc, 400)}") from None


def _cannot_import(group: str, target: object, error: BaseException) -> UserError:
    return UserError(f"{group}: cannot import {target}: {one_line(error)}")


def build_model(cfg: TrainConfig) -> Classifier:
    """The model named by cfg.model, sized from the dataset, with the output the loss expects: asked for
    log-probabilities only where the loss takes them (nll), so that a class of the user's own that knows
    nothing of them trains with cross_entropy."""
    return _trainable(_make("model", cfg.model, **_model_kwargs(cfg)), cfg.model.get("_target_"))


def _trainable(model: Any, target: object) -> Classifier:
    if not isinstance(model, nn.Module):  # a _target_ of the user's own: anything callable
        raise UserError(f"model: {target} returned an object of type {type(model).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"model: {target} has no weights to train")
    return model


def _model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    return {"log_probs": True} if cfg.loss.get("_target_") in LOG_PROB_LOSSES else {}


def try_config(cfg: TrainConfig) -> None:
    """What only torch can check of a new run's config, tried on stand-ins before anything is read or written:
    a model class of the user's own, the loss, the optimizer's first step and the scheduler. The run meets each
    again as it builds them: the check there for a sweep's jobs and for resumed runs, whose config this one is
    not."""
    if cfg.model.get("_target_") not in shipped_targets()["model"]:  # fmnist's own: config.py checked its keys
        _check_model_class(cfg)
    try_loss(cfg)
    try_optimizer(cfg)
    quiet = log.level
    log.setLevel(logging.ERROR)  # its warnings (T_max shorter than the run) come with the run's own build
    try:
        build_scheduler(cfg, _stand_in_optimizer(cfg)[0], steps_per_epoch=1)
    finally:
        log.setLevel(quiet)


def _check_model_class(cfg: TrainConfig) -> None:
    """A model `_target_` of the user's own (one conf/model/ does not ship), checked before the run directory
    exists: that it imports, is a torch.nn.Module where it is a class, takes the keys its config gives, and
    makes a module with weights to train: built on the meta device (no memory), or once for real on the CPU
    where it cannot be built there (it reads real numbers as it initialises, or fails whatever the device: a
    function taking **kwargs such as torchvision's resnet18 passes the signature check and fails only when
    called)."""
    target = str(cfg.model.get("_target_"))
    hydra_log = logging.getLogger("hydra.utils")  # which logs the error it raises, in three lines
    hydra_log.disabled = True
    try:
        made_by = get_object(target)
    except Exception as exc:  # the user's module, running as it is imported: whatever it raises is one line
        raise _cannot_import("model", target, exc.__cause__ or exc) from None
    finally:
        hydra_log.disabled = False
    if isinstance(made_by, type) and not issubclass(made_by, nn.Module):
        raise UserError(f"model: {target} is a class, but not a torch.nn.Module")
    if not callable(made_by):
        raise UserError(f"model: {target} is a {type(made_by).__name__}, not a class or function that makes a model")
    settings = {k: v for k, v in cfg.model.items() if not str(k).startswith("_")}
    try:
        inspect.signature(made_by).bind(**settings, **_model_kwargs(cfg))
    except TypeError as exc:
        raise UserError(f"model: {target} does not take these settings ({one_line(exc)}): "
                        f"{', '.join(f'model.{k}' for k in settings) or 'none'}") from None
    except ValueError:  # no signature to read (a builtin): instantiate will say
        return
    if _meta_model(cfg) is None:  # see above: a UserError there is raised again by the build for real
        build_model(cfg)


def _meta_model(cfg: TrainConfig) -> Classifier | None:
    """cfg's model on the meta device (shapes, no memory), to size it before it is built for real; None where it
    cannot be built there (a class of the user's own that needs real numbers to initialise): its size is then
    unknown, and a config that cannot build at all is reported where the model is built for real."""
    try:
        with torch.device("meta"):
            return build_model(cfg)
    except UserError:
        return None


def linear_step_macs(cfg: TrainConfig) -> int | None:
    """Multiply-adds of one training batch's forward pass where the model is made of Linear layers only (each
    layer's weights once per image; None where it has a convolution or is not sized: _meta_model), counted
    without a forward pass (a first one on the meta device imports sympy, 1.5 s)."""
    model = _meta_model(cfg)
    if model is None or any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in model.modules()):
        return None
    return cfg.batch_size * sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def try_optimizer(cfg: TrainConfig) -> int:
    """One step of cfg's optimizer on a stand-in weight, before any data is read: a value that only torch checks
    (`+optimizer.amsgrad=maybe`, an optimizer that needs a closure) fails here in one line rather than at the
    first training step as a traceback. Returns the values of state it keeps per weight (Adam: 2, SGD with
    momentum: 1), counted rather than looked up, so that any option and any optimizer of the user's own count
    right."""
    optimizer, weight = _stand_in_optimizer(cfg)
    try:
        optimizer.step()
    except Exception as exc:  # whatever torch raises for a setting, the training loop would meet it too
        raise UserError(f"optimizer: its first step fails on a stand-in weight ({type(exc).__name__}: "
                        f"{one_line(exc, 300)})") from None
    return sum(t.numel() for state in optimizer.state.values() for t in state.values()
               if isinstance(t, torch.Tensor) and t.shape == weight.shape) // weight.numel()


def _stand_in_optimizer(cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.Tensor]:
    """cfg's optimizer over one stand-in weight of 8 values, with a gradient: what try_optimizer steps and
    try_config's scheduler is built over."""
    weight = torch.zeros(8, requires_grad=True)
    weight.grad = torch.ones(8)
    return build_optimizer(cfg, [weight], torch.device("cpu")), weight


def try_loss(cfg: TrainConfig) -> None:
    """cfg's loss on stand-in outputs and labels, before any data is read, for the same reason as try_optimizer
    (`+loss.ignore_index=abc`, a regression loss given class labels)."""
    classes = cfg.dataset.num_classes
    outputs = torch.full((2, classes), -math.log(classes))  # uniform log-probabilities: logits or NLL's input
    try:
        with warnings.catch_warnings():  # a loss that fails says why in its error; its warnings would precede it
            warnings.simplefilter("ignore")
            build_loss(cfg)(outputs, torch.tensor([0, 1]))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"loss: on stand-in outputs ({type(exc).__name__}: {one_line(exc, 300)})") from None


def check_model_fits(cfg: TrainConfig, device: torch.device, state_per_weight: int) -> None:
    """Refuse, before any data is read, a model whose weights, gradients and optimizer state (try_optimizer's
    count) alone exceed the memory `device` has free: `model.hidden=[65536,65536,65536]` is valid key by key, and
    would otherwise end in an allocator's traceback or the kernel's OOM killer. Activations come on top, so this
    is a floor."""
    free, model = free_memory(device), _meta_model(cfg)
    if free is None or model is None:
        return
    n = sum(p.numel() for p in model.parameters())
    need = (2 + state_per_weight) * 4 * n  # fp32 weights, their gradients, the optimizer's state
    if need > free:
        what = "weights, gradients and optimizer state" if state_per_weight else "weights and gradients"
        raise UserError(f"the model has {n:,} parameters: its {what} alone need {need / 2**30:.1f} GiB, and "
                        f"the {device.type} has {free / 2**30:.1f} GiB free; choose a smaller model")


def training_precision(cfg: TrainConfig, device: torch.device, precision: str | None = None,
                       trained: str | None = None) -> torch.dtype:
    """The autocast dtype of this config's model on `device` (`precision` overrides the config's), chosen
    alike for training, fmnist-eval and fmnist-predict, so that evaluation reproduces training's numbers;
    `trained`: what the checkpoint recorded that training computed in, kept where this device can."""
    dtype = resolve_precision(precision or cfg.precision, device, lambda: linear_step_macs(cfg), trained)
    if device.type == "cpu" and not in_hardware(dtype, device):  # only when named: auto never picks it there
        log.warning("precision=%s is emulated on this CPU (no AMX or AVX-512 BF16): it computes several times "
                    "slower than fp32 here", precision_name(dtype))
    return dtype


def build_loss(cfg: TrainConfig) -> nn.Module:
    """cfg.loss. Class weights (`loss.weight=[...]`), a list in the config, become the tensor torch takes; left
    null they are not passed at all, so that a loss of the user's own without a `weight` needs no `~loss.weight`
    (which Hydra cannot delete while it is null)."""
    node = {k: v for k, v in cfg.loss.items() if not (k == "weight" and v is None)}
    if "weight" in node:
        node["weight"] = torch.tensor(node["weight"], dtype=torch.float32)
    return _make("loss", node)


def build_optimizer(cfg: TrainConfig, params: Iterable[nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """cfg.optimizer over the parameters, with the fused kernels where the optimizer has them.

    Fused is no shortcut for speed tests only: on a CPU it trains the mlp and the feedforward net markedly
    faster (docs/benchmarks.md). With compile=cudagraph the state is made capturable.
    """
    factory: Callable[..., torch.optim.Optimizer] = _make("optimizer", cfg.optimizer)
    target = cfg.optimizer.get("_target_")
    extra: dict[str, Any] = {}
    if device.type in ("cpu", "cuda") and target in FUSED:
        extra["fused"] = True
    if device.type == "cuda" and cfg.compile == "cudagraph" and target in CAPTURABLE:
        extra["capturable"] = True
    try:
        return factory(params, **extra)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"optimizer: {one_line(exc, 400)}") from None


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
                    ) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, str]:
    """The scheduler and whether it steps per `epoch` or per `step` (batch)."""
    node = dict(cfg.scheduler)
    interval = node.pop("interval", "epoch")
    if "_target_" not in node:
        return None, interval
    if node.get("steps_per_epoch") == "???":
        node["steps_per_epoch"] = steps_per_epoch
    length = cfg.epochs * (steps_per_epoch if interval == "step" else 1)
    if isinstance(node.get("T_max"), int) and node["T_max"] < length:  # a resumed cosine run trained for longer
        log.warning("scheduler.T_max=%d is shorter than the run (%d %s): past it the cosine rate rises again",
                    node["T_max"], length, "steps" if interval == "step" else "epochs")
    scheduler = _make("scheduler", node, optimizer)
    start = min(group["lr"] for group in optimizer.param_groups)
    if not start >= 0:  # keys added with + (`+scheduler.div_factor=-5`) reach torch unchecked, and it trains so
        raise UserError(f"scheduler: the learning rate would start at {start:g}; it must be a number >= 0")
    return scheduler, interval


def use_channels_last(model: nn.Module, device: torch.device, setting: bool | str) -> bool:
    """Whether conv layers should run in channels-last memory format.

    auto: on CUDA for any conv model (tensor cores want NHWC); on the CPU only when every conv is at least
    16 channels wide: measured there, the 32-64-128 cnn trains faster in it and the 4-4 bn_cnn slower
    (docs/benchmarks.md).
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if setting != "auto":
        return bool(setting) and bool(convs)
    if not convs:
        return False
    return device.type == "cuda" or min(c.out_channels for c in convs) >= 16


def in_memory_format(model: nn.Module, device: torch.device, setting: bool | str) -> nn.Module:
    """The model (on `device`) in the memory format its convs should run in there (use_channels_last): training,
    evaluation and prediction alike. On a 2-core Xeon max-pooling 64 maps of 24x24 ran 10x slower in the
    default format than in channels-last: fmnist-eval of a cnn trained in channels-last took 11-12 s in the
    default format, 7 s in training's."""
    return model.to(memory_format=torch.channels_last) if use_channels_last(model, device, setting) else model


@dataclass
class Training:
    """The objects a run trains with. `net` is what the training loop calls (wrapped in
    DistributedDataParallel in a distributed run, torch.compile'd for compile=torch), `infer` what evaluation
    calls (never the DDP wrapper: each rank evaluates its own block without collectives), `model` the plain
    module whose weights checkpoints keep (so no `module.` prefixes)."""

    model: Classifier
    net: nn.Module
    infer: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scheduler_interval: str  # "epoch" or "step"
    scaler: torch.amp.GradScaler | None  # fp16 loss scaling
    dtype: torch.dtype  # autocast's: checkpoints record it, so that evaluation and a resumed run compute alike

    def state_dicts(self) -> dict[str, Any]:
        """What a checkpoint keeps of these objects to continue exactly."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dicts(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def build_training(cfg: TrainConfig, device: torch.device, dtype: torch.dtype, steps_per_epoch: int, *,
                   distributed: bool = False) -> Training:
    """Model (memory format, DDP, compile mode), loss, optimizer, scheduler and loss scaler as the config asks.

    fmnist-train and scripts/bench.py both build through here, so the benchmark measures what users run.
    DistributedDataParallel broadcasts rank 0's initial weights and averages gradients in backward.
    """
    model = in_memory_format(build_model(cfg).to(device), device, cfg.channels_last)
    net: nn.Module = model
    if distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile == "torch":
        net = torch.compile(net)
    infer = model if distributed else net
    optimizer = build_optimizer(cfg, model.parameters(), device)
    scheduler, interval = build_scheduler(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    return Training(model, net, infer, build_loss(cfg).to(device), optimizer, scheduler, interval, scaler, dtype)


def check_weights_fit(cfg: TrainConfig, weights: dict[str, torch.Tensor], source: str) -> None:
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
                        f"{one_line(differ[0], 80)})")


def config_from_checkpoint(ckpt: dict[str, Any], path: Path, trusted: frozenset[str], overrides: dict[str, Any]
                           ) -> TrainConfig:
    """The one way from a checkpoint back to a config that may be built (eval, predict and resume).

    The stored config is allowlisted before OmegaConf or Hydra see it, validated like a user's, given
    `overrides` (dataset.root is always the caller's, never the file's) and checked against the stored
    weights on the meta device.
    """
    check_stored_config(ckpt["config"], trusted, source=str(path))
    try:
        cfg = stored_train_config(ckpt["config"], overrides)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    if list(cfg.dataset.classes) != ckpt["class_names"]:
        raise UserError(f"{path}: its class_names do not match its config's dataset.classes")
    check_weights_fit(cfg, ckpt["model"], str(path))
    return cfg
