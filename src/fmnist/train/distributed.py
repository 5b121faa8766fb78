"""Data-parallel training with torch.distributed: joining the process group torchrun prepared, and the few
collectives the loop needs (metric sums, agreeing to stop, waiting for rank 0's files).

A one-process run gets `Collective(World())`, whose every operation is local, so the loop and the run have
no distributed branches of their own. Gradients are averaged by DistributedDataParallel (train/setup.py).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from fmnist.errors import UserError
from fmnist.world import STAMP_ENV, World

# How long a rank waits at exit for the others (rank 0 writes the figures meanwhile). Past it the rank leaves
# alone, its own collectives done; a rank whose peer failed elsewhere is the one that waits this long.
LEAVE_TIMEOUT = timedelta(seconds=10)


def join(world: World) -> None:
    """Join the process group (torchrun's env:// rendezvous, or SLURM's tasks through submitit) and take
    rank 0's start stamp, so that Hydra resolves one run directory in every rank. Joining twice is a no-op.

    gloo carries CPU tensors and nccl CUDA ones: each collective goes to the backend of its tensor's device.
    The stamp travels as integers, never as a pickled object.
    """
    if dist.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ:  # SLURM tasks: where rank 0 listens, as submitit derives it
        try:
            from submitit.helpers import TorchDistributedEnvironment
        except ImportError:
            raise UserError("a SLURM job of several tasks needs MASTER_ADDR and MASTER_PORT set, or "
                            "pip install 'fmnist[cluster]' (submitit) to derive them") from None
        TorchDistributedEnvironment().export()
    else:
        _end_with_launcher()
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    atexit.register(_leave)
    stamp = torch.tensor([round(time.time() * 1e6), os.getpid()], dtype=torch.int64)
    dist.broadcast(stamp, src=0)
    os.environ[STAMP_ENV] = f"{int(stamp[0]) / 1e6!r}-{int(stamp[1])}"


def _end_with_launcher() -> None:
    """Die with the launcher: after `kill -9` of torchrun (or a lost node) the ranks must not train on,
    holding the run directory, while the next launch resumes it. Linux only (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() == 1:  # orphaned already, before the request took effect
        os._exit(128 + signal.SIGKILL)


def _leave() -> None:
    """Leave the process group at exit, after one last barrier.

    gloo's worker threads drop a collective's tensors after the caller's wait() has returned, and dropping
    them takes the GIL. A worker that gets there only once the interpreter is finalizing dies on it and the
    rank aborts ("terminate called without an active exception", SIGABRT) after a finished run: 3 times in
    42 two-rank runs on a 2-core CPU, none in 150 with this barrier. gloo's barrier waits for this rank's
    earlier collectives, and the rank waits in it for its peers with the GIL released, which leaves the
    workers time to finish. A peer that died, or that waits in another collective after an error of its
    own, fails or times out the barrier: this rank leaves anyway.
    """
    if not dist.is_initialized():
        return
    with contextlib.suppress(RuntimeError):  # DistBackendError: a peer is gone or elsewhere; its exit says why
        dist.barrier(timeout=LEAVE_TIMEOUT)
    dist.destroy_process_group()


class Collective:
    """Operations across the ranks of one run; local (and free) when the run has one process."""

    def __init__(self, world: World) -> None:
        self.world = world

    @property
    def distributed(self) -> bool:
        """Under a launcher, even with one process: torchrun with one GPU runs the same DDP code as with eight."""
        return self.world.launched

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place (on its own device's backend)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """True in every rank when it is True in one: all ranks stop at the same step, or none does."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        """Wait for every rank (e.g. until rank 0 has written the file the others read next)."""
        if self.distributed:
            dist.barrier()
