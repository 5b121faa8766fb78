"""Threads that follow the CPU's other users (`threads=auto`).

OpenMP threads that spin while they wait are the fastest way to run a small model on an otherwise idle CPU,
and the slowest on a shared one: once processes x threads exceed the cores, each spinning thread burns the
core its teammate needs (0.08-0.3x, docs/benchmarks.md). Sleeping threads (OMP_WAIT_POLICY=PASSIVE) never
collapse, but on a virtual machine every wake-up of an idle core is expensive (the mlp alone at 0.25-0.76x).
So a run with `threads=auto` keeps OpenMP's default and watches instead: every LOOK_EVERY seconds it reads
how much of its cores other processes used, of the time the cores ran (on a virtual machine the host may run
its own work for part of each second: "steal" in /proc/stat; a neighbour busy all the time it runs then uses a
whole core, though less of the clock's seconds), and steps down to the cores they leave free (at least one
thread, where nothing spins), or up when they are free again: back to its share of the cores, or for a
parallel sweep's job to all of them once the other jobs have ended. With one thread a run never spins.

The cost: CPU results depend on the thread count in the last bits, so a run whose thread count changed is
not bit-for-bit the run it would have been alone. `threads=N` fixes the count (with sleeping threads).
"""

from __future__ import annotations

import logging
import math
import os
import time

import torch

from fmnist.config import usable_cpus

LOOK_EVERY = 0.5  # seconds between looks at the CPU (two small file reads)
SLACK = 0.35  # cores other processes may use (daemons, a terminal, bursts of the kernel) before a run gives one up
QUIET = 30.0  # seconds after a logged change during which further changes are logged at debug level only

log = logging.getLogger("fmnist")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(cpus: set[int]) -> tuple[float, float] | None:
    """Seconds that `cpus` have spent busy (user, nice, system, irq, softirq; a guest's time is inside user)
    and running at all (busy, idle or waiting: all but what the hypervisor stole) since boot, from
    /proc/stat; None where there is no such file."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.readlines()
    except OSError:
        return None
    busy = ran = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, idle, iowait, irq, softirq = (int(v) for v in rest.split()[:7])
            busy += user + nice + system + irq + softirq
            ran += user + nice + system + idle + iowait + irq + softirq
    return busy / _TICK, ran / _TICK


def threads_left(cores: int, others: float, most: int) -> int:
    """Threads that fit beside `others` cores of other processes' work: the rest of the cores, at least one,
    at most `most`. Up to SLACK of a core of others is ignored."""
    return max(1, min(most, cores - math.ceil(others - SLACK)))


class CpuShare:
    """The thread count of a `threads=auto` run, adjusted to what other processes leave free of its cores."""

    def __init__(self) -> None:
        self.most = 0  # 0: not watching
        self.cpus: set[int] = set()
        self._next = math.inf
        self._busy = self._ran = self._own = 0.0
        self._logged = -math.inf

    def follow(self, most: int) -> None:
        """Watch the CPU from now on, with up to `most` threads while it is free (from torch's current count)."""
        self.cpus = usable_cpus()
        seconds = cpu_seconds(self.cpus)
        if most < 2 or seconds is None:  # nothing to step down from, or nothing to read
            self.stop()
            return
        self.most = most
        (self._busy, self._ran), self._own = seconds, time.process_time()
        self._next = time.monotonic() + LOOK_EVERY

    def stop(self) -> None:
        self.most, self._next = 0, math.inf

    def check(self) -> None:
        """Called between batches: a clock read, and every LOOK_EVERY seconds a look at the CPU."""
        now = time.monotonic()
        if now < self._next:
            return
        seconds, own = cpu_seconds(self.cpus), time.process_time()
        if seconds is None:
            self.stop()
            return
        self._next = now + LOOK_EVERY
        busy, ran = seconds
        if ran - self._ran < LOOK_EVERY / 4:  # the cores hardly ran (the host took them): look again later
            return
        # cores others used while the cores ran: the clock's seconds would undercount a neighbour on a VM
        # whose host steals time, and a run stepping up beside it would spin on the neighbour's core
        others = max(0.0, (busy - self._busy) - (own - self._own)) / (ran - self._ran) * len(self.cpus)
        self._busy, self._ran, self._own = busy, ran, own
        threads, was = threads_left(len(self.cpus), others, self.most), torch.get_num_threads()
        if threads != was:
            torch.set_num_threads(threads)
            level, self._logged = (logging.INFO, now) if now - self._logged >= QUIET else (logging.DEBUG, self._logged)
            log.log(level, "cpu threads %d -> %d: other processes use %.1f of %d cores", was, threads, others,
                     len(self.cpus))


SHARE = CpuShare()  # the process's one thread count, like torch's own
