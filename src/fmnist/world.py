"""Which process of a distributed run this one is, as the launcher says (torchrun's RANK, WORLD_SIZE,
LOCAL_RANK; else SLURM's SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID for one srun task per GPU), and the
run's shared start stamp.

torch-free on purpose: the CLI needs to know before torch loads whether it is one rank of several (a batch
size that does not divide by the world size is refused before anything starts), and the run directory's
name is resolved by Hydra, in every rank, from the stamp that rank 0 chose (FMNIST_RUN_STAMP), so a
distributed run has one directory whatever each rank's clock says.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime

STAMP_ENV = "FMNIST_RUN_STAMP"  # "<unix time>-<pid>" of rank 0, set for every rank before Hydra starts
_STARTED = time.time()


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # ranks on this machine (they share its cores)
    launched: bool = False  # started by a distributed launcher (torchrun, even with one process; SLURM tasks)

    @property
    def main(self) -> bool:
        """The rank that writes checkpoints, metrics, figures and logs."""
        return self.rank == 0


def current_world() -> World:
    """The world torchrun (or a launcher that sets the same variables), else SLURM, started this process in."""
    env = os.environ
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            world = World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")),
                          int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])), launched=True)
        elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
            per_node = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or env["SLURM_NTASKS"]
            world = World(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0")),
                          int(per_node.split("(")[0].split(",")[0]), launched=True)  # "4(x2)": 4 on each of 2 nodes
        else:
            return World()
    except ValueError:
        return World()
    return world if 0 <= world.rank < world.size else World()


def run_started() -> datetime:
    """When the run began: rank 0's clock in every rank of a distributed run, this process's otherwise."""
    stamp = os.environ.get(STAMP_ENV, "")
    try:
        return datetime.fromtimestamp(float(stamp.split("-")[0]))
    except ValueError:
        return datetime.fromtimestamp(_STARTED)


def run_pid() -> int:
    """The pid that names the run directory: rank 0's in a distributed run, this process's otherwise."""
    stamp = os.environ.get(STAMP_ENV, "")
    try:
        return int(stamp.split("-")[1])
    except (IndexError, ValueError):
        return os.getpid()
