"""threads=auto follows the CPU's other users: fewer threads while they use the cores, all of them again after."""

from __future__ import annotations

import os

import pytest
import torch

from fmnist import cpu_share
from fmnist.cpu_share import CpuShare, cpu_seconds, threads_left


def test_threads_left_gives_up_a_core_for_each_core_others_use():
    assert threads_left(2, 0.0, 2) == 2
    assert threads_left(2, 0.3, 2) == 2  # a daemon, a terminal, the kernel's bursts: ignored
    assert threads_left(2, 0.5, 2) == 1  # any real neighbour: nothing may spin on its core
    assert threads_left(2, 3.0, 2) == 1  # never fewer than one
    assert threads_left(8, 2.5, 8) == 5
    assert threads_left(8, 0.0, 4) == 4  # never more than the run's share (sweep jobs, ranks)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_cpu_seconds_counts_only_the_cores_asked_for():
    cpus = os.sched_getaffinity(0)
    everything = cpu_seconds(cpus)
    assert everything is not None and 0 < everything[0] < everything[1]  # busy, and running at all
    assert cpu_seconds(set()) == (0, 0)
    later = cpu_seconds(cpus)
    assert later is not None and later[0] >= everything[0] and later[1] >= everything[1]


def test_steps_down_while_others_use_the_cores_and_back_up_after(monkeypatch):
    """A fake clock and /proc/stat: another process takes a whole core, then leaves."""
    clock = {"now": 100.0, "busy": 1000.0, "ran": 5000.0, "own": 10.0}
    monkeypatch.setattr(cpu_share.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(cpu_share.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(cpu_share, "cpu_seconds", lambda cpus: (clock["busy"], clock["ran"]))
    monkeypatch.setattr(cpu_share, "usable_cpus", lambda: {0, 1})
    threads = torch.get_num_threads()
    share = CpuShare()
    try:
        torch.set_num_threads(2)
        share.follow(2)

        def spend(seconds: float, own_cores: float, other_cores: float, stolen: float = 0.0) -> None:
            """`stolen`: the share of the time a hypervisor ran something else on both cores."""
            ran = seconds * (1 - stolen)
            clock["now"] += seconds
            clock["own"] += ran * own_cores
            clock["busy"] += ran * (own_cores + other_cores)
            clock["ran"] += ran * 2
            share.check()

        spend(0.1, 2.0, 0.0)  # before LOOK_EVERY: no look
        spend(0.5, 2.0, 0.0)
        assert torch.get_num_threads() == 2  # alone: every core
        spend(0.5, 1.0, 1.0)
        assert torch.get_num_threads() == 1  # a neighbour took a core
        spend(0.5, 1.0, 1.0)
        assert torch.get_num_threads() == 1  # and keeps it
        spend(0.5, 1.0, 0.05)
        assert torch.get_num_threads() == 2  # gone again
        spend(0.5, 1.0, 1.0, stolen=0.7)
        assert torch.get_num_threads() == 1  # a neighbour on a core the host shares: 0.3 of the clock, all it ran
        spend(0.5, 2.0, 0.0, stolen=0.7)
        assert torch.get_num_threads() == 2  # alone on shared cores: nothing to give up
        spend(0.5, 1.0, 1.0, stolen=0.9)
        assert torch.get_num_threads() == 2  # the cores hardly ran: no look
        share.stop()
        spend(0.5, 1.0, 1.0)
        assert torch.get_num_threads() == 2  # stopped: a fixed count is left alone

        torch.set_num_threads(1)  # a parallel sweep's job: its share is one core, all of them once it is alone
        share.follow(2)
        spend(0.5, 1.0, 1.0)
        assert torch.get_num_threads() == 1  # the other job still runs
        spend(0.5, 1.0, 0.0)
        assert torch.get_num_threads() == 2  # it has ended
    finally:
        torch.set_num_threads(threads)


def test_nothing_to_follow_with_one_thread_or_no_proc_stat(monkeypatch):
    share = CpuShare()
    share.follow(1)
    assert share.most == 0
    monkeypatch.setattr(cpu_share, "cpu_seconds", lambda cpus: None)
    share.follow(2)
    assert share.most == 0


def test_only_a_fixed_thread_count_makes_openmp_sleep():
    """OMP_WAIT_POLICY is read when torch loads, so fmnist-train decides it from the overrides as typed."""
    from fmnist.cli.train import sleeping_threads

    assert not sleeping_threads([]) and not sleeping_threads(["model=mlp", "threads=auto"])
    assert sleeping_threads(["threads=2"]) and sleeping_threads(["++threads=1"])
    assert not sleeping_threads(["threads=2", "threads=auto"])  # the last one counts, as in Hydra
    assert sleeping_threads(["threads=1,2"])  # a sweep over fixed counts
