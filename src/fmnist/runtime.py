"""Device, precision, seeding and progress choices: the facts of the machine a run happens on."""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fmnist.config import usable_cores
from fmnist.cpu_share import SHARE
from fmnist.errors import UserError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """Turn a validated `auto|cpu|cuda|cuda:N|mps` into a device that exists, or say why it cannot.

    A rank of a distributed run (`local_rank`: its index on this machine) asking for auto or cuda gets the
    GPU of its own index, made the current device (what nccl's collectives use).
    """
    if local_rank is not None and name in ("auto", "cuda") and torch.cuda.is_available():
        device = resolve_device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
        return device
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("device=mps was asked for, but MPS is not available here; use device=cpu or auto")
        return torch.device("mps")
    # cuda or cuda:N (config.py has checked the name)
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise UserError(f"device={name} was asked for, but {why}; use device=cpu or device=auto")
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"device={name} was asked for, but only {count} CUDA device(s) exist (0..{count - 1})")
    return device


def cpu_bf16_flag() -> str | None:
    """The flag by which this CPU multiplies bf16 matrices fast enough for autocast to pay, if any.

    Measured (docs/benchmarks.md), the hardware flag alone does not decide it: with AMX (`amx_bf16`) an Intel
    Xeon trained the cnn 1.9x faster; with AVX-512 BF16 but no AMX, AMD's Zen 4 trained the cnn 1.27x, the
    mlp 1.19x, the CIFAR-10 feedforward 1.48x faster (the bn_cnn 0.86x) and a Zen 5 the speed presets' nets
    1.14-1.76x, while an Intel Xeon with the same flag and AMX hidden by its hypervisor ran every model and
    preset at 0.65-1.02x of fp32; on an AMD EPYC with neither a BatchNorm-GELU net ran ~8x slower. So: AMX,
    or AVX-512 BF16 on AMD.
    """
    vendor, _, flags = cpu_identity()
    return bf16_flag(vendor, flags)


def cpu_identity() -> tuple[str, str, set[str]]:
    """The first CPU's `vendor_id`, `model name` and flags from /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                fields.setdefault(key, value)
                if key == "flags":
                    break
    except OSError:
        pass
    return fields.get("vendor_id", ""), fields.get("model name", ""), set(fields.get("flags", "").split())


def bf16_flag(vendor: str, flags: set[str]) -> str | None:
    """cpu_bf16_flag's rule on one CPU's `vendor_id` and flags."""
    if "amx_bf16" in flags:
        return "amx_bf16"
    if "avx512_bf16" in flags and vendor == "AuthenticAMD":
        return "avx512_bf16"
    return None


# With AMX, autocast pays for a net of Linear layers only where a training step multiplies enough. Measured on a
# 2-core Xeon at batch sizes 16-512: every step under 65 M forward multiply-adds ran at 0.68-0.94x of fp32 in
# bf16 (the mlp at batch 64, 15 M: 0.68x), every one over 90 M at 1.02-1.35x. Conv nets gain at any size there
# (bf16 halves their feature maps' memory traffic): the 4-4 bn_cnn, 3.7 M, 1.21x; the cnn 1.18-1.70x.
AMX_MIN_LINEAR_STEP_MACS = 80_000_000


def resolve_precision(precision: str, device: torch.device,
                      linear_step_macs: Callable[[], int | None] | None = None, trained: str | None = None
                      ) -> torch.dtype:
    """The autocast dtype: by default bf16 where it is fast (CUDA; a CPU with AMX, or an AMD one with AVX-512
    BF16), fp32 elsewhere. `linear_step_macs()`: a training step's forward multiply-adds where the model is made
    of Linear layers only (None for one with convolutions): on a CPU with AMX such a step smaller than
    AMX_MIN_LINEAR_STEP_MACS stays in fp32, where autocast's casts cost more than AMX gains.

    `trained`: the precision a checkpoint's model was trained in ("bf16"). auto keeps it wherever `device`
    computes it in hardware, so that evaluating a checkpoint, or resuming its run, on another kind of machine
    (or under another fmnist version's rule) computes as training did and reproduces its numbers."""
    if precision == "auto":
        if trained is not None and in_hardware(PRECISIONS[trained], device):
            return PRECISIONS[trained]
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        flag = cpu_bf16_flag() if device.type == "cpu" else None
        if flag == "amx_bf16" and linear_step_macs is not None:
            macs = linear_step_macs()
            if macs is not None and macs < AMX_MIN_LINEAR_STEP_MACS:
                return torch.float32
        return torch.bfloat16 if flag else torch.float32
    dtype = PRECISIONS[precision]
    if dtype is torch.float16:
        require_cuda("precision=fp16", device, "fp32 or bf16")
    return dtype


def require_cuda(setting: str, device: torch.device, instead: str) -> None:
    """Refuse a setting that only CUDA runs, on another device."""
    if device.type != "cuda":
        raise UserError(f"{setting} needs a CUDA device (device is {device}); use {instead}")


def check_machine(device: str, precision: str, compile_mode: str) -> None:
    """Refuse what this machine cannot run (a device it lacks; fp16 or CUDA graphs without CUDA) in the words
    the run itself would use, but before the run has a directory or a log: only a config that names such a
    thing pays for importing torch here, so that the others' errors stay instant."""
    resolved = resolve_device(device)
    if precision != "auto":
        resolve_precision(precision, resolved)
    if compile_mode == "cudagraph":
        require_cuda("compile=cudagraph", resolved, "compile=none or compile=torch")


def in_hardware(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `device` computes `dtype` at speed rather than by emulation: fp32 anywhere, bf16 on CUDA GPUs that
    support it and on CPUs with cpu_bf16_flag(), fp16 on CUDA."""
    if dtype is torch.float32:
        return True
    if device.type == "cuda":
        return dtype is torch.float16 or torch.cuda.is_bf16_supported()
    return dtype is torch.bfloat16 and device.type == "cpu" and cpu_bf16_flag() is not None


def precision_name(dtype: torch.dtype) -> str:
    """The `precision=` value of an autocast dtype (what checkpoints record)."""
    return next(name for name, d in PRECISIONS.items() if d is dtype)


def autocast(device: torch.device, dtype: torch.dtype, cache: bool = True) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision where asked for; a no-op context for fp32.

    cache=False for regions captured in a CUDA graph: autocast's weight-cast cache must not outlive them.
    """
    if dtype is torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def free_memory(device: torch.device) -> int | None:
    """Bytes `device` can still give a process (the kernel's MemAvailable on a CPU), or None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def seed_everything(seed: int) -> None:
    """Seed every generator a run touches, so the same seed and config give the same metrics on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def show_progress(setting: bool | str) -> bool:
    """tqdm bars only on a terminal unless forced: logs and CI output stay readable."""
    if setting == "auto":
        return sys.stderr.isatty()
    return bool(setting)


def configure_threads(setting: int | str, processes: int = 1, lockstep: bool = False) -> int:
    """CPU threads for this process. `auto` divides the usable cores among the `processes` that run side by
    side (parallel sweep jobs, ranks), so that processes x threads never exceeds the cores: beyond that,
    OpenMP's threads wait on each other and every process slows down many times over (docs/benchmarks.md);
    and then follows what other processes leave free of them (cpu_share.py): up to every usable core, as a
    sweep job whose neighbours have ended does, or only up to its share for processes in `lockstep` (the
    ranks of one run, which wait for each other at every step)."""
    cores = usable_cores()
    threads = max(1, cores // max(1, processes)) if setting == "auto" else int(setting)
    torch.set_num_threads(threads)
    if setting == "auto":
        SHARE.follow(threads if lockstep else cores)
    else:
        SHARE.stop()
    return threads
