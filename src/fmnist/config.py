"""Where the configs live, what a valid config is, and the typed settings the rest of fmnist reads.

Validation happens here, in one table, after Hydra composes the config: Hydra would accept `epochs=abc`
as a string, and torch would fail much later with an unhelpful message. Every rule names the key, the
value and what is allowed, so the CLI can print it as one line. A valid config then becomes frozen
dataclasses (`TrainConfig`, `EvalConfig`, `PredictConfig`): this is the only module besides the entry
points that reads an OmegaConf object, so everything below it takes plain, typed arguments.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from fmnist.errors import UserError
from fmnist.paths import user_path
from fmnist.world import World, run_pid, run_started


def config_dir() -> Path:
    """The conf/ directory: inside the installed wheel, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"fmnist configs not found next to {here}: the installation is incomplete")


CONFIG_DIR = str(config_dir())

def usable_cpus() -> set[int]:
    """The cores this process may run on (its affinity mask: a container's or taskset's share, not the host's)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """How many cores this process may run on (usable_cpus)."""
    return len(usable_cpus())


def sweep_jobs(threads: int | str, device: str = "cpu") -> int:
    """Parallel sweep jobs that fit the usable cores at `threads` each (auto: one thread per job); one job
    at a time when the jobs train on a GPU (device cuda or mps, or auto on a machine that has one), which
    they would share instead of the cores."""
    if device != "cpu" and (device != "auto" or _has_accelerator()):
        return 1
    per_job = threads if isinstance(threads, int) and threads > 0 else 1
    return max(1, usable_cores() // per_job)


# What a GPU's driver puts in /dev on Linux (NVIDIA's control device, WSL2's paravirtual GPU, AMD ROCm's
# kernel driver): without one of them torch finds no GPU either.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def no_gpu_driver() -> bool:
    """Linux without a GPU device file: no GPU, known without importing torch (2.6-3 s on a 2-core VM)."""
    return sys.platform == "linux" and not any(os.path.exists(path) for path in GPU_DEVICE_FILES)


def _has_accelerator() -> bool:
    """What device=auto finds besides the CPU (runtime.resolve_device). Asked only when a --multirun sizes
    its launcher, in a process that trains nothing when the jobs run in workers: torch is imported only
    where a GPU driver is present (or off Linux)."""
    if no_gpu_driver():
        return False
    import torch

    return torch.cuda.is_available() or torch.backends.mps.is_available()


# Used in hydra.run.dir / hydra.sweep.dir: the start time and the process id make run directories unique on
# this machine; in a distributed run both are rank 0's, so every rank resolves the same directory. Cached, as
# Hydra's own `now`: a sweep's launcher copies the cache of the sweep's config into every job's, so that jobs
# in worker processes (another pid, another start) resolve the sweep directory the launcher made.
if not OmegaConf.has_resolver("fmnist.pid"):
    OmegaConf.register_new_resolver("fmnist.pid", run_pid, use_cache=True)
    OmegaConf.register_new_resolver("fmnist.now", lambda pattern: run_started().strftime(pattern), use_cache=True)
    # conf/hydra/launcher/parallel.yaml: n_jobs from the run's threads and device, read from the config's root
    # (the defaults where the root has no such keys: the config that `--cfg hydra` prints)
    OmegaConf.register_new_resolver("fmnist.sweep_jobs", lambda *, _root_: sweep_jobs(
        _root_.get("threads", "auto"), _root_.get("device", "auto")))

_MISSING = object()


INT64_MAX = 2**63 - 1
MAX_WIDTH = 1 << 16  # layer widths, image sizes, class counts: far beyond any small classifier
MAX_THREADS = 1024


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite int or float: NaN and inf are never a sensible setting."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(lo: int, hi: int = INT64_MAX) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and lo <= v <= hi


def _number_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = True) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if not _is_number(v):
            return False
        above = v > lo if lo_open else v >= lo
        below = v < hi if hi_open else v <= hi
        return above and below

    return ok


def _one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices and type(v) is type(choices[0])


def _int_list(min_len: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and min_len <= len(v) <= 64 and all(
        _is_int(x) and 1 <= x <= MAX_WIDTH for x in v)


def _number_list(v: Any) -> bool:
    return isinstance(v, list) and 0 < len(v) <= 4 and all(_is_number(x) for x in v)


def _class_names(v: Any) -> bool:
    """Printable names without `$` (matplotlib would read it as mathtext) or control characters."""
    return isinstance(v, list) and 2 <= len(v) <= MAX_WIDTH and all(
        isinstance(x, str) and 0 < len(x) <= 64 and x.isprintable() and "$" not in x for x in v)


DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", re.ASCII)  # a class path, as trust= names it


def _dotted_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and DOTTED_NAME.fullmatch(x) is not None for x in v)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


INF = float("inf")


@dataclass(frozen=True)
class Rule:
    key: str
    ok: Callable[[Any], bool]
    allowed: str
    required: bool = True


TRUST = Rule("trust", _dotted_names, "a list of dotted class names, e.g. [mypkg.Net]", required=False)
DEVICE = Rule("device", lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
              "auto, cpu, cuda, cuda:N or mps")

LOGGERS = ("csv", "tensorboard", "mlflow")
# Test-time augmentation (data.transforms.TTA): the image; with its mirror image; with the image
# moved one pixel each way; both.
TTA_MODES = ("none", "flip", "translate", "flip_translate")
LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}  # module, extra


def check_available(loggers: Any) -> None:
    """A logger whose package is missing is a config error, found before anything runs."""
    for name in loggers:
        if name in LOGGER_PACKAGES:
            module, extra = LOGGER_PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise UserError(f"logger={name} needs the {module} package, which is not installed: "
                                f"pip install 'fmnist[{extra}]'")


# Keys a training run reads. Group options may lack some keys (rmsprop has no nesterov): not required.
TRAIN_RULES: tuple[Rule, ...] = (
    Rule("epochs", _int_at_least(1, 1_000_000), "an integer in [1, 1000000]"),
    Rule("batch_size", _int_at_least(1, 2**31 - 1), "an integer in [1, 2^31)"),
    Rule("eval_batch_size", _int_at_least(1, 2**31 - 1), "an integer in [1, 2^31)"),
    Rule("seed", _int_at_least(0), "an integer in [0, 2^63)"),
    DEVICE,
    Rule("precision", _one_of("auto", "fp32", "bf16", "fp16"), "auto, fp32, bf16 or fp16"),
    Rule("compile", _one_of("auto", "none", "torch", "cudagraph"), "auto, none, torch or cudagraph", required=False),
    Rule("channels_last", lambda v: v == "auto" or _is_bool(v), "auto, true or false", required=False),
    Rule("num_workers", _int_at_least(0, MAX_THREADS), f"an integer in [0, {MAX_THREADS}]"),
    Rule("threads", lambda v: v == "auto" or _int_at_least(1, MAX_THREADS)(v),
         f"auto or an integer in [1, {MAX_THREADS}]", required=False),
    Rule("progress", lambda v: v == "auto" or _is_bool(v), "auto, true or false"),
    Rule("data.loader", _one_of("tensor", "torchvision"), "tensor or torchvision"),
    Rule("resume", lambda v: v is None or (isinstance(v, str) and v != ""), "auto, a checkpoint or a run directory",
         required=False),
    Rule("checkpoint_every_steps", lambda v: v is None or _int_at_least(0)(v), "an integer in [0, 2^63) (0: off)",
         required=False),
    Rule("on_nan", _one_of("stop", "skip_batch"), "stop or skip_batch", required=False),
    Rule("tta", _one_of(*TTA_MODES), f"one of {', '.join(TTA_MODES)}", required=False),
    Rule("skip_batch_limit", _number_in(0, 1, hi_open=False), "a share of an epoch's batches in [0, 1]",
         required=False),
    TRUST,
    Rule("dataset.name", _one_of("mnist", "fashion", "cifar10"), "mnist, fashion or cifar10"),
    Rule("dataset.root", lambda v: v is None or isinstance(v, str), "a directory path"),
    Rule("dataset.download", _is_bool, "true or false"),
    Rule("dataset.num_classes", _int_at_least(2, MAX_WIDTH), f"an integer in [2, {MAX_WIDTH}]"),
    Rule("dataset.classes", _class_names, "a list of class names (printable, at most 64 characters, no $)"),
    Rule("dataset.channels", _one_of(1, 3), "1 or 3"),
    Rule("dataset.image_size", _int_at_least(1, 4096), "an integer in [1, 4096]"),
    Rule("dataset.mean", _number_list, "a list of numbers, one per channel"),
    Rule("dataset.std", lambda v: _number_list(v) and all(x > 0 for x in v), "a list of numbers > 0"),
    Rule("dataset.val_fraction", _number_in(0, 1, lo_open=True), "a number in (0, 1)"),
    Rule("dataset.augment.crop_padding", _int_at_least(0, 4096), "an integer in [0, 4096]"),
    Rule("dataset.augment.hflip", _is_bool, "true or false"),
    Rule("dataset.augment.rotation", _number_in(0, 180, hi_open=False), "a number of degrees in [0, 180]"),
    Rule("dataset.augment.erase", _number_in(0, 1), "a fraction of the image side in [0, 1)", required=False),
    Rule("model.hidden", _int_list(0), "a list of positive integers, e.g. [256,128]", required=False),
    Rule("model.channels", _int_list(1), "a non-empty list of positive integers, e.g. [32,64]",
         required=False),
    Rule("model.dropout", _number_in(0, 1), "a number in [0, 1)", required=False),
    Rule("model.batch_norm", _is_bool, "true or false", required=False),
    Rule("model.widths", _int_list(1), "a non-empty list of positive integers, e.g. [24,48,96]", required=False),
    Rule("model.depth", _int_at_least(1, 64), "an integer in [1, 64]", required=False),
    Rule("model.stem_stride", _int_at_least(1, 4), "an integer in [1, 4]", required=False),
    Rule("model.head_grid", _int_at_least(1, 8), "an integer in [1, 8]", required=False),
    Rule("model.pool_before_norm", _is_bool, "true or false", required=False),
    Rule("optimizer.lr", _number_in(0, INF, lo_open=True), "a number > 0"),
    Rule("optimizer.weight_decay", _number_in(0, INF, hi_open=True), "a number >= 0", required=False),
    Rule("optimizer.momentum", _number_in(0, 1), "a number in [0, 1)", required=False),
    Rule("optimizer.nesterov", _is_bool, "true or false", required=False),
    Rule("optimizer.betas", lambda v: isinstance(v, list) and len(v) == 2 and all(_number_in(0, 1)(x) for x in v),
         "two numbers in [0, 1), e.g. [0.9,0.999]", required=False),
    Rule("optimizer.alpha", _number_in(0, 1, hi_open=False), "a number in [0, 1]", required=False),
    Rule("scheduler.interval", _one_of("epoch", "step"), "epoch or step"),
    Rule("scheduler.step_size", _int_at_least(1, 1_000_000), "an integer >= 1 (epochs)", required=False),
    Rule("scheduler.gamma", _number_in(0, 1, lo_open=True, hi_open=False), "a number in (0, 1]",
         required=False),
    Rule("scheduler.T_max", _int_at_least(1, 1_000_000), "an integer >= 1 (epochs, or steps with interval=step)",
         required=False),
    Rule("scheduler.eta_min", _number_in(0, INF), "a number >= 0", required=False),
    Rule("scheduler.max_lr", _number_in(0, INF, lo_open=True), "a number > 0", required=False),
    Rule("scheduler.epochs", _int_at_least(1, 1_000_000), "an integer >= 1", required=False),
    Rule("scheduler.pct_start", _number_in(0, 1), "a number in [0, 1)", required=False),
    Rule("loss.label_smoothing", _number_in(0, 1), "a number in [0, 1)", required=False),
    Rule("loss.weight", lambda v: v is None or (isinstance(v, list) and 0 < len(v) <= MAX_WIDTH and all(
        _number_in(0, INF)(x) for x in v)), "null or a list of class weights >= 0, one per class", required=False),
    Rule("loss.reduction", _one_of("mean"), "mean (each batch's loss is weighed by its size)", required=False),
    Rule("logger", lambda v: isinstance(v, dict) and set(v) <= set(LOGGERS),
         f"one or more of {', '.join(LOGGERS)}, e.g. logger=[csv,tensorboard]", required=False),
    Rule("logger.tensorboard.log_dir", lambda v: v is None or isinstance(v, str), "null or a directory",
         required=False),
    Rule("logger.tensorboard.every_steps", _int_at_least(1, 2**31 - 1), "an integer >= 1", required=False),
    Rule("logger.mlflow.tracking_uri", lambda v: v is None or (isinstance(v, str) and v != ""),
         "null (a local store in the output root) or a tracking URI", required=False),
    Rule("logger.mlflow.experiment", lambda v: isinstance(v, str) and 0 < len(v) <= 256,
         "an experiment name", required=False),
    Rule("logger.mlflow.log_checkpoint", _is_bool, "true or false", required=False),
)


_OPTIONAL_INT = lambda v: v is None or _int_at_least(1, 2**31 - 1)(v)  # noqa: E731

# What fmnist-eval and fmnist-predict read from their own configs (the rest comes from the checkpoint).
INSPECT_RULES: tuple[Rule, ...] = (
    Rule("ckpt", lambda v: v is None or isinstance(v, str), "a checkpoint path"),
    DEVICE,
    Rule("precision", lambda v: v is None or v in ("auto", "fp32", "bf16", "fp16"), "null, auto, fp32, bf16 or fp16"),
    Rule("out_dir", lambda v: v is None or isinstance(v, str), "a directory path"),
    TRUST,
)
SPLIT_RULE = Rule("split", _one_of("test", "val", "train"), "test, val or train")
EVAL_RULES: tuple[Rule, ...] = INSPECT_RULES + (
    SPLIT_RULE,
    Rule("tta", lambda v: v is None or v in TTA_MODES, f"null (as in training) or one of {', '.join(TTA_MODES)}",
         required=False),
    Rule("batch_size", _OPTIONAL_INT, "null or an integer in [1, 2^31)"),
    Rule("progress", lambda v: v == "auto" or _is_bool(v), "auto, true or false"),
)
PREDICT_RULES: tuple[Rule, ...] = INSPECT_RULES + (
    SPLIT_RULE,
    Rule("index", lambda v: v is None or _int_at_least(0)(v), "null or an integer >= 0"),
    Rule("image", lambda v: v is None or isinstance(v, str), "null or an image file"),
    Rule("invert", lambda v: v == "auto" or _is_bool(v), "auto, true or false"),
    Rule("seed", lambda v: v is None or _int_at_least(0)(v), "null or an integer >= 0"),
    Rule("topk", _int_at_least(1, MAX_WIDTH), "an integer >= 1"),
    Rule("format", _one_of("text", "json"), "text or json"),
)


def _as_written(value: Any) -> str:
    """A value as an override writes it (seed=null, not seed=None); text quoted, so that optimizer.lr='1e-3'
    shows why it is refused."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return f"[{','.join(map(_as_written, value))}]"
    return repr(value) if isinstance(value, str) else str(value)


def validate(cfg: DictConfig, rules: tuple[Rule, ...] = TRAIN_RULES) -> None:
    """Check every rule, then the combinations; raise UserError for the first problem found."""
    for rule in rules:
        try:
            value = OmegaConf.select(cfg, rule.key, default=_MISSING)
        except Exception as exc:  # an interpolation that cannot resolve
            raise UserError(f"{rule.key}: {exc}") from None
        if value is _MISSING:
            if rule.required:
                raise UserError(f"{rule.key} is missing from the config (expected {rule.allowed})")
            continue
        if isinstance(value, DictConfig) or OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        if not rule.ok(value):
            raise UserError(f"{rule.key}={_as_written(value)} is not valid: expected {rule.allowed}")
    if rules is TRAIN_RULES:
        _check_fixed_keys(cfg)
        _check_train_combinations(cfg)
    elif rules is PREDICT_RULES and cfg.image is not None and cfg.index is not None:
        raise UserError("give either image=FILE or index=N, not both")
    elif rules is PREDICT_RULES and cfg.image is not None and cfg.split != "test":
        raise UserError(f"split={cfg.split} picks a dataset image, image=FILE is your own: give one of them")
    elif rules is PREDICT_RULES and cfg.image is None and cfg.invert != "auto":
        raise UserError(f"invert={_as_written(cfg.invert)} is for a picture of your own (image=FILE); a dataset "
                        f"image is shown to the model as it is")
    if rules is not TRAIN_RULES:
        unknown = [f"dataset.{k}" for k in (cfg.get("dataset") or {}) if k not in INSPECT_DATASET_KEYS]
        if unknown:
            raise UserError(f"{unknown[0]} cannot be changed at eval time (only "
                            f"{', '.join(f'dataset.{k}' for k in INSPECT_DATASET_KEYS)})")


# Nodes whose keys fmnist reads one by one, all of them named in TRAIN_RULES: a key added there is read by
# nothing. (model, optimizer, scheduler and loss pass their keys on to the class they name; a key added at the
# top level, +note=baseline, is the user's own record of the run, kept in its config and shown on its page.)
FIXED_NODES = ("dataset", "dataset.augment", "data")


def fixed_keys(node: str) -> list[str]:
    """The keys fmnist-train reads in `node`, one of FIXED_NODES."""
    return sorted({rule.key[len(node) + 1:].split(".")[0] for rule in TRAIN_RULES if rule.key.startswith(f"{node}.")})


def _check_fixed_keys(cfg: DictConfig) -> None:
    """A key no one reads (+dataset.limit=5, a checkpoint's stray dataset.augment key) is refused rather than
    ignored, or left to fail as an unexpected argument."""
    for node in FIXED_NODES:
        value = OmegaConf.select(cfg, node)
        if not isinstance(value, DictConfig):
            continue
        known = fixed_keys(node)
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f" (did you mean {node}.{close[0]}?)" if close else ""
                raise UserError(f"{node}.{key} is not a setting fmnist-train reads{hint}: drop it; {node} has "
                                f"{', '.join(known)}")


def _check_train_combinations(cfg: DictConfig) -> None:
    """Values that are each valid but not together."""
    if len(cfg.dataset.mean) != cfg.dataset.channels or len(cfg.dataset.std) != cfg.dataset.channels:
        raise UserError(
            f"dataset.mean and dataset.std need one value per channel ({cfg.dataset.channels}), "
            f"got {list(cfg.dataset.mean)} and {list(cfg.dataset.std)}"
        )
    if cfg.get("compile") == "cudagraph" and (obstacle := cudagraph_obstacle(
            scheduled=bool(cfg.scheduler.get("_target_")), on_nan=cfg.get("on_nan", "stop"), precision=cfg.precision,
            loader=cfg.data.loader, device=cfg.device)):
        raise UserError(f"compile=cudagraph {obstacle}")
    if "epochs" in cfg.scheduler and cfg.scheduler.epochs < cfg.epochs:  # OneCycleLR: its steps are counted out
        raise UserError(f"epochs={cfg.epochs} runs past the end of the one-cycle schedule (scheduler.epochs="
                        f"{cfg.scheduler.epochs}): set scheduler.epochs to at least epochs (a resumed run keeps "
                        f"its schedule: start a new run to train longer)")
    weights = cfg.loss.get("weight")
    if weights is not None and len(weights) != cfg.dataset.num_classes:
        raise UserError(f"loss.weight has {len(weights)} class weights but dataset.num_classes="
                        f"{cfg.dataset.num_classes}")
    check_available(cfg.get("logger") or {})
    _check_model_keys(cfg.model)
    if len(cfg.dataset.classes) != cfg.dataset.num_classes:
        raise UserError(
            f"dataset.classes has {len(cfg.dataset.classes)} names but dataset.num_classes="
            f"{cfg.dataset.num_classes}"
        )


def cudagraph_obstacle(*, scheduled: bool, on_nan: str, precision: str, loader: str, device: str) -> str | None:
    """Why the captured step cannot train a run so set (None: it can, on a CUDA device): compile=cudagraph is
    refused for it, and compile=auto trains it eagerly instead."""
    if scheduled:
        return "replays a fixed learning rate: use scheduler=none, or compile=none/torch"
    if on_nan == "skip_batch":
        return "cannot skip single batches: use on_nan=stop, or compile=none/torch"
    if precision == "fp16":
        return "does not support precision=fp16 (loss scaling): use bf16 or fp32"
    if loader != "tensor":
        return "needs data.loader=tensor (the data must live on the GPU)"
    if device in ("cpu", "mps"):
        return f"needs a CUDA device, not device={device}; use compile=none or compile=torch"
    return None


def option_files(group: str, option: str, dirs: tuple[Path, ...] = (), _seen: frozenset[str] = frozenset()
                 ) -> list[Path]:
    """An option's file in conf/GROUP/ (or in the first of `dirs`, searched after conf/ as Hydra searches a
    --config-dir, that has it), after the files of the same group's options its defaults list extends
    (bn_cnn_wide: bn_cnn.yaml, then bn_cnn_wide.yaml): together, every key the option sets. [] where there is
    no such file."""
    path = next((p for d in (config_dir(), *dirs) if (p := d / group / f"{option}.yaml").is_file()), None)
    if option in _seen or path is None:
        return []
    node = yaml.safe_load(path.read_text()) or {}
    parents = [d for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_"] if isinstance(
        node, dict) else []
    return [f for parent in parents for f in option_files(group, parent, dirs, _seen | {option})] + [path]


@cache
def _model_options() -> dict[str, dict[str, frozenset[str]]]:
    """The model classes that conf/model/ names, each with its options and the keys each option sets."""
    classes: dict[str, dict[str, frozenset[str]]] = {}
    for option in sorted(f.stem for f in (config_dir() / "model").glob("*.yaml")):
        node: dict[str, Any] = {}
        for path in option_files("model", option):
            node.update(yaml.safe_load(path.read_text()) or {})
        if node.get("_target_"):
            classes.setdefault(node["_target_"], {})[option] = frozenset(node.keys() - {"defaults"})
    return classes


def _check_model_keys(model: DictConfig) -> None:
    """Keys that fmnist's model class would refuse as unexpected arguments, named before any run starts: an
    experiment= preset written for one model and run with another passes its keys on."""
    options = _model_options().get(model.get("_target_"), {})
    known = frozenset().union(*options.values())
    unknown = [k for k in model if options and k not in known]
    if not unknown:
        return
    keys = ", ".join(f"model.{k}" for k in unknown)
    others = sorted(o for per_option in _model_options().values() for o, k in per_option.items() if set(unknown) <= k)
    where = f" but of model={', '.join(others)}: choose that model, or drop" if others else ": drop"
    raise UserError(f"{keys} {'is not a setting' if len(unknown) == 1 else 'are not settings'} of "
                    f"{model._target_} (model={', '.join(sorted(options))}){where} "
                    f"{'it' if len(unknown) == 1 else 'them'} ({' '.join(f'~model.{k}' for k in unknown)})")


# ---- the settings, typed: what the rest of fmnist reads ------------------------------------------------


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0
    hflip: bool = False
    rotation: float = 0.0
    erase: float = 0.0  # cutout: a black square of this fraction of the side, in half of the images

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.rotation > 0 or self.erase > 0


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: where its files are, what its images and classes are, how it is split and augmented."""

    name: str
    root: str | None
    download: bool
    classes: tuple[str, ...]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_fraction: float = 0.1
    augment: Augment = Augment()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class TrainConfig:
    """A validated training config. `model`, `loss`, `optimizer` and `scheduler` stay `_target_` nodes
    (plain dicts) for instantiation; `resolved` is the whole config as plain data, what a checkpoint keeps."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    seed: int
    device: str
    precision: str
    dataset: DatasetSpec
    model: dict[str, Any]
    loss: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    resolved: dict[str, Any] = field(repr=False)
    loader: str = "tensor"
    num_workers: int = 0
    compile: str = "none"
    channels_last: bool | str = "auto"
    threads: int | str = "auto"
    progress: bool | str = "auto"
    checkpoint_every_steps: int = 0
    on_nan: str = "stop"
    skip_batch_limit: float = 0.25
    tta: str = "none"  # test-time augmentation of the final test: one of TTA_MODES
    resume: str | None = None
    trust: frozenset[str] = frozenset()
    loggers: dict[str, dict[str, Any]] = field(default_factory=dict)  # logger=: name -> its settings


def train_config(cfg: DictConfig) -> TrainConfig:
    """Validate a composed training config and turn it into typed settings."""
    validate(cfg, TRAIN_RULES)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    return _train_settings(resolved)


def check_world(cfg: TrainConfig, world: World) -> TrainConfig:
    """The rules a distributed run (torchrun, SLURM tasks) adds: batch_size is the global batch, split evenly."""
    if not world.launched:
        return cfg
    if cfg.batch_size % world.size:
        raise UserError(f"batch_size={cfg.batch_size} is the global batch and must divide by the {world.size} "
                        f"processes of this run: use a multiple of {world.size}")
    if cfg.compile == "cudagraph":
        raise UserError("compile=cudagraph does not run in a distributed run (torchrun): use compile=none or torch")
    if cfg.on_nan == "skip_batch":
        raise UserError("on_nan=skip_batch does not run in a distributed run (torchrun): the ranks would skip "
                        "different batches; use on_nan=stop")
    return cfg


def stored_train_config(stored: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """A config kept in a checkpoint (already allowlisted), with `overrides` (dotted key -> value) applied.

    A None override keeps the stored value, except for dataset.root: the data directory is always the
    caller's (None: the default one), never the file's. Keys that no one reads are left out, as training
    left them (an override that adds one is refused).
    """
    cfg = OmegaConf.create(stored)
    for node in FIXED_NODES:  # a key its run was given and never read (+dataset.limit=5, before such were refused)
        value = OmegaConf.select(cfg, node)
        if isinstance(value, DictConfig):
            for key in [k for k in value if k not in fixed_keys(node)]:
                del value[key]
    for key, value in overrides.items():
        if value is not None or key == "dataset.root":  # a dict (logger) replaces the stored one whole
            OmegaConf.update(cfg, key, value, merge=not isinstance(value, dict), force_add=True)
    return train_config(cfg)


def lookup(resolved: dict[str, Any], key: str) -> Any:
    """A dotted key of a resolved config (None where it is absent)."""
    node: Any = resolved
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _train_settings(c: dict[str, Any]) -> TrainConfig:
    d = c["dataset"]
    dataset = DatasetSpec(name=d["name"], root=d["root"], download=d["download"], classes=tuple(d["classes"]),
                          channels=d["channels"], image_size=d["image_size"], mean=tuple(d["mean"]),
                          std=tuple(d["std"]), val_fraction=d["val_fraction"], augment=Augment(**d["augment"]))
    return TrainConfig(
        epochs=c["epochs"], batch_size=c["batch_size"], eval_batch_size=c["eval_batch_size"], seed=c["seed"],
        device=c["device"], precision=c["precision"], dataset=dataset, model=c["model"], loss=c["loss"],
        optimizer=c["optimizer"], scheduler=c["scheduler"], resolved=c, loader=c["data"]["loader"],
        num_workers=c["num_workers"], compile=c.get("compile", "none"),
        channels_last=c.get("channels_last", "auto"), threads=c.get("threads", "auto"), progress=c["progress"],
        checkpoint_every_steps=c.get("checkpoint_every_steps") or 0, on_nan=c.get("on_nan", "stop"),
        skip_batch_limit=c.get("skip_batch_limit", 0.25), tta=c.get("tta", "none"), resume=c.get("resume"),
        trust=frozenset(c.get("trust") or ()), loggers={k: v or {} for k, v in (c.get("logger") or {}).items()},
    )


INSPECT_DATASET_KEYS = ("root", "download")  # what eval and predict may change of a checkpoint's dataset


@dataclass(frozen=True)
class InspectConfig:
    """What fmnist-eval and fmnist-predict share: which checkpoint, where, and the user's data directory."""

    ckpt: str | None
    device: str
    precision: str | None
    out_dir: str | None
    trust: frozenset[str]
    data_root: str | None
    data_download: bool | None

    @property
    def out_path(self) -> Path | None:
        """out_dir as every writer and check uses it: a leading ~ expanded, as for ckpt=, image= and dataset.root."""
        return user_path(self.out_dir) if self.out_dir else None


@dataclass(frozen=True)
class EvalConfig(InspectConfig):
    split: str = "test"
    tta: str | None = None  # None: as the checkpoint's training did
    batch_size: int | None = None
    progress: bool | str = "auto"


@dataclass(frozen=True)
class PredictConfig(InspectConfig):
    split: str = "test"  # the split index= and the random pick draw from
    index: int | None = None
    image: str | None = None
    invert: bool | str = "auto"
    seed: int | None = None
    topk: int = 3
    format: str = "text"


def eval_config(cfg: DictConfig) -> EvalConfig:
    validate(cfg, EVAL_RULES)
    return EvalConfig(**_inspect_settings(cfg), split=cfg.split, tta=cfg.get("tta"), batch_size=cfg.batch_size,
                      progress=cfg.progress)


def predict_config(cfg: DictConfig) -> PredictConfig:
    validate(cfg, PREDICT_RULES)
    return PredictConfig(**_inspect_settings(cfg), split=cfg.split, index=cfg.index, image=cfg.image, invert=cfg.invert,
                         seed=cfg.seed, topk=cfg.topk, format=cfg.format)


def _inspect_settings(cfg: DictConfig) -> dict[str, Any]:
    dataset = cfg.get("dataset") or {}
    return {"ckpt": cfg.ckpt, "device": cfg.device, "precision": cfg.precision, "out_dir": cfg.out_dir,
            "trust": frozenset(cfg.trust or ()), "data_root": dataset.get("root"),
            "data_download": dataset.get("download")}
