#!/usr/bin/env python3
"""Training throughput of fmnist's engine against the tutorial loop, side by side in one run.

    python scripts/bench.py --root DATA                           # every pair, CPU (and CUDA if present)
    python scripts/bench.py --root DATA --device cuda --pairs cnn:fashion,mlp:fashion

Rows, for each model:dataset pair and device:
  tutorial       torchvision Dataset -> DataLoader -> PIL ToTensor/Normalize, batch 64, loss.item() per batch
  engine b64     fmnist's tensor data path + train_one_epoch, batch 64
  engine b512    the same at batch 512
  (CPU: fp32, and bf16 at batch 64; CUDA also: compile=torch, compile=cudagraph at both batch sizes)
Every loop runs --repeats times in interleaved rounds; the table shows medians and the ratios' range.
Then time-to-accuracy: seconds of training (evaluation excluded) until the test accuracy reaches the target,
with the default settings and with the faster alternative (CPU: fp32 and bf16; CUDA: compile=cudagraph).
Prints markdown tables; --json writes every number too.

    python scripts/bench.py --root DATA --load --pairs mlp:fashion,cnn:fashion

--load measures a shared CPU instead: each pair alone, two of it side by side (as parallel sweep jobs or
two users' runs are), and beside two busy non-torch processes, with OpenMP's default, the passive wait
policy that fmnist-train sets for threads=N, and threads=auto (spinning threads that step down while other
processes use the cores); each training runs in its own process.

    python scripts/bench.py --root DATA --ddp --pairs cnn:fashion --repeats 2

--ddp puts the cost of DistributedDataParallel on one CPU on record: fmnist-train under torchrun with 2
processes x 1 thread against 1 process x 2 threads, the same global batch.

    python scripts/bench.py --root DATA --sweep --repeats 5

--sweep times a whole `fmnist-train --multirun` (default: mlp and cnn x two learning rates, 1 epoch, Fashion-MNIST)
with its jobs side by side, as fmnist runs a sweep on a CPU, against the same sweep one job at a time, in
alternating rounds; the ratio is per round, and the table gives its median and range (a noisy host moves one
round's ratio by a tenth either way).

    python scripts/bench.py --root DATA --eval --pairs cnn:fashion,bn_cnn_wide:fashion,speednet:fashion

--eval measures evaluation (validation every epoch, the final test, fmnist-eval) at several eval_batch_size
values: test-split images/s through the engine's evaluate, the sizes interleaved in each round.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import median

import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from fmnist.config import CONFIG_DIR, TrainConfig, train_config, usable_cores
from fmnist.data.batches import Batches, TensorBatches, load_split, make_batches
from fmnist.data.sources import open_dataset
from fmnist.data.transforms import TTA, Normalize
from fmnist.runtime import configure_threads, cpu_bf16_flag, cpu_identity, synchronize
from fmnist.train.loop import EpochStats, evaluate, train_epochs
from fmnist.train.setup import Training, build_loss, build_model, build_training, training_precision
from fmnist.train.step import make_step, resolve_compile

PAIRS = ("cnn:fashion", "mlp:fashion", "bn_cnn:mnist", "feedforward:cifar10")
TARGETS = {"cnn:fashion": 0.91, "bn_cnn:mnist": 0.97, "mlp:fashion": 0.86}


def machine() -> str:
    """The CPU by name (lscpu's model name) and its bf16 support, the usable cores and torch: figures from
    different machines differ by more than any change measured here, so every table says where it ran."""
    name = cpu_identity()[1] or platform.processor() or platform.machine()
    flag = cpu_bf16_flag()
    return (f"{name}{f' with {flag}' if flag else ', no fast bf16'}, {usable_cores()} usable cores; "
            f"torch {torch.__version__}")


def settings(root: str, device: str, *overrides: str) -> TrainConfig:
    """The validated training config fmnist-train would run with these overrides."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return train_config(compose(config_name="train", overrides=[
            f"dataset.root={root}", f"device={device}", "progress=false", *overrides]))


def config(model: str, dataset: str, root: str, device: str, **extra: object) -> TrainConfig:
    return settings(root, device, f"model={model}", f"dataset={dataset}", *(f"{k}={v}" for k, v in extra.items()))


def batches(cfg: TrainConfig, split: str, device: torch.device, training: bool) -> Batches:
    return make_batches(cfg.dataset, split, device, batch_size=cfg.batch_size if training else cfg.eval_batch_size,
                        seed=cfg.seed, training=training, loader=cfg.loader, num_workers=cfg.num_workers)


def engine_epochs(cfg: TrainConfig, train: Batches, device: torch.device, epochs: int
                  ) -> tuple[Training, torch.dtype, Iterator[EpochStats]]:
    """fmnist's own setup and epoch loop, as fmnist-train runs them: (the Training, its autocast dtype, an
    iterator of epochs)."""
    dtype = training_precision(cfg, device)
    cfg = resolve_compile(cfg, device, dtype)
    t = build_training(cfg, device, dtype, len(train))
    runner = make_step(cfg.compile, t, train, device=device, dtype=dtype)
    return t, dtype, train_epochs(runner, train, 1, epochs)


def tutorial_loop(cfg: TrainConfig, device: torch.device, samples: int, epochs: int = 1
                  ) -> tuple[float, torch.nn.Module]:
    """The reference: what the tutorials do. Returns (samples/s after a 5-batch warm-up, the model)."""
    mean, std = list(cfg.dataset.mean), list(cfg.dataset.std)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    ds = open_dataset(cfg.dataset.name, cfg.dataset.root, False, train=True, transform=tf)
    ds = Subset(ds, range(min(samples, len(ds))))
    loader = DataLoader(ds, batch_size=64, shuffle=True)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    loss_fn = build_loss(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer["lr"])
    model.train()
    running, seen, start = 0.0, 0, None
    for _ in range(epochs):
        for x, y in loader:
            if start is None and seen >= 5 * 64:  # warm-up excluded
                synchronize(device)
                start, seen = time.perf_counter(), 0
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            running += loss.item()
            seen += len(y)
    synchronize(device)
    return seen / (time.perf_counter() - start), model


def accuracy_check(root: str, device: torch.device, epochs: int) -> list[dict[str, object]]:
    """Test accuracy after the same epochs at batch 64: tutorial loop vs the engine's two data paths."""
    rows = []
    cfg = config("mlp", "fashion", root, device.type)
    test = batches(cfg, "test", device, training=False)
    _, model = tutorial_loop(cfg, device, 60000, epochs)
    acc = evaluate(model, test, build_loss(cfg), 10, device=device, dtype=torch.float32).accuracy
    rows.append({"loop": "tutorial (all 60k training images)", "accuracy": acc})
    for loader in ("tensor", "torchvision"):
        cfg = config("mlp", "fashion", root, device.type, **{"data.loader": loader})
        acc = train_and_test(cfg, device, epochs)[2]
        rows.append({"loop": f"engine, data.loader={loader} (54k, 6k held out)", "accuracy": acc})
    return rows


def engine_throughput(cfg: TrainConfig, device: torch.device, samples: int) -> tuple[float, float]:
    """fmnist's engine on the first `samples` training images: (samples/s of the second epoch, the first
    epoch's seconds, which include any one-time compilation or capture)."""
    images, labels = load_split(cfg.dataset, "train", cfg.seed)
    train = TensorBatches(images[:samples].to(device), labels[:samples].to(device), cfg.batch_size,
                          Normalize(cfg.dataset.mean, cfg.dataset.std, device), shuffle=True, seed=cfg.seed)
    _, _, epochs = engine_epochs(cfg, train, device, 2)
    first, second = list(epochs)
    return second.samples_per_s, first.seconds


def variants(device: torch.device) -> list[tuple[str, int, str]]:
    """(compile, batch size, precision) of the engine rows on this device."""
    if device.type == "cuda":
        return [("none", 64, "auto"), ("none", 512, "auto"), ("torch", 512, "auto"), ("cudagraph", 64, "auto"),
                ("cudagraph", 512, "auto")]
    # CPU rows name their precision: auto means bf16 on a CPU with AMX or an AMD one with AVX-512 BF16, fp32 elsewhere.
    return [("none", 64, "fp32"), ("none", 512, "fp32"), ("none", 64, "bf16")]


def tta_variants(device: torch.device) -> list[tuple[str, str]]:
    """(compile, precision) of the time-to-accuracy runs: the defaults, and the fast alternative worth knowing."""
    if device.type == "cuda":
        return [("none", "auto"), ("cudagraph", "auto")]
    return [("none", "fp32"), ("none", "bf16")]


def throughput_rows(pair: str, root: str, device: torch.device, samples: int, repeats: int) -> list[dict[str, object]]:
    """The tutorial loop and every engine variant, `repeats` times in turn, so that a slow spell of a noisy
    machine hits all of them alike. Each row: median samples/s, and the median and range of its ratios to
    the tutorial run of the same round."""
    model, dataset = pair.split(":")
    base = config(model, dataset, root, device.type)
    if device.type == "cpu":
        tutorial_samples, samples = min(samples, 8192), samples
    else:
        tutorial_samples = samples = max(samples, 50000)
    reference: list[float] = []
    runs: dict[tuple[str, int, str], list[tuple[float, float]]] = {v: [] for v in variants(device)}
    for round_ in range(repeats):
        reference.append(tutorial_loop(base, device, tutorial_samples)[0])
        print(f"{device} {pair} round {round_ + 1}: tutorial {reference[-1]:,.0f} samples/s", file=sys.stderr)
        for compile_mode, bs, precision in runs:
            cfg = config(model, dataset, root, device.type, batch_size=bs, compile=compile_mode, precision=precision)
            runs[compile_mode, bs, precision].append(engine_throughput(cfg, device, samples))
            print(f"  engine {compile_mode} b{bs} {precision}: {runs[compile_mode, bs, precision][-1][0]:,.0f}",
                  file=sys.stderr)
    rows: list[dict[str, object]] = [{"device": device.type, "pair": pair, "loop": "tutorial b64",
                                      "samples_per_s": median(reference), "ratio": 1.0, "ratio_min": 1.0,
                                      "ratio_max": 1.0, "runs": reference}]
    for (compile_mode, bs, precision), results in runs.items():
        ratios = [sps / ref for (sps, _), ref in zip(results, reference, strict=True)]
        label = f"engine {compile_mode} b{bs}" + ("" if precision == "auto" else f" {precision}")
        rows.append({"device": device.type, "pair": pair, "loop": label,
                     "samples_per_s": median(sps for sps, _ in results), "ratio": median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios), "warmup_s": results[0][1],
                     "runs": [sps for sps, _ in results]})
    if device.type == "cuda":
        rows[-1]["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    return rows


def train_and_test(cfg: TrainConfig, device: torch.device, max_epochs: int, target: float | None = None
                   ) -> tuple[float, int, float]:
    """Train with the engine, testing after every epoch, until `target` test accuracy (if given) or
    max_epochs: (training seconds with evaluation excluded, epochs, last test accuracy). The seconds are
    NaN when a target was given and not reached."""
    torch.manual_seed(cfg.seed)
    train, test = batches(cfg, "train", device, training=True), batches(cfg, "test", device, training=False)
    t, dtype, epochs = engine_epochs(cfg, train, device, max_epochs)
    spent, acc = 0.0, 0.0
    for stats in epochs:
        spent += stats.seconds
        acc = evaluate(t.infer, test, t.loss_fn, cfg.dataset.num_classes, device=device, dtype=dtype).accuracy
        if target is not None and acc >= target:
            return spent, stats.epoch, acc
    return (float("nan") if target is not None else spent), max_epochs, acc


# ---- --records: the speed presets over several seeds ---------------------------------------------------

RECORDS = ("fashion_speedrun", "mnist_speedrun", "cifar10_speedrun", "fashion_best", "mnist_best")


def record_run(cfg: TrainConfig, device: torch.device) -> tuple[float, float]:
    """One preset run as fmnist-train trains it: (training seconds, evaluation excluded; test accuracy with
    the preset's TTA, after the last epoch)."""
    torch.manual_seed(cfg.seed)
    train, test = batches(cfg, "train", device, training=True), batches(cfg, "test", device, training=False)
    t, dtype, epochs = engine_epochs(cfg, train, device, cfg.epochs)
    spent = 0.0
    for stats in epochs:
        spent += stats.seconds
        if t.scheduler is not None and t.scheduler_interval == "epoch":
            t.scheduler.step()
    acc = evaluate(t.model, test, t.loss_fn, cfg.dataset.num_classes, device=device, dtype=dtype,
                   tta=TTA(cfg.tta, cfg.dataset)).accuracy
    return spent, acc


def records(names: list[str], root: str, device: torch.device, seeds: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name in names:
        runs = [record_run(settings(root, device.type, f"experiment={name}", f"seed={seed}"), device)
                for seed in range(seeds)]
        accs, secs = [a for _, a in runs], [s for s, _ in runs]
        rows.append({"preset": name, "seeds": seeds, "acc_mean": sum(accs) / seeds, "acc_min": min(accs),
                     "acc_std": (sum((a - sum(accs) / seeds) ** 2 for a in accs) / seeds) ** 0.5,
                     "seconds_mean": sum(secs) / seeds, "runs": runs})
        print(f"  {name}: {runs}", file=sys.stderr)
    return rows


# ---- --load: the same training beside other work on the same CPU ------------------------------------------

LOAD_CASES = (  # (label, OMP_WAIT_POLICY or None for OpenMP's default, threads per training, trainings, busy)
    ("alone, 2 threads, OpenMP default", None, 2, 1, 0),
    ("alone, 2 threads, passive (threads=2)", "PASSIVE", 2, 1, 0),
    ("alone, threads=auto (fmnist's default)", None, "auto", 1, 0),
    ("2 side by side, 2 threads each, OpenMP default", None, 2, 2, 0),
    ("2 side by side, 2 threads each, passive (threads=2)", "PASSIVE", 2, 2, 0),
    ("2 side by side, threads=auto each", None, "auto", 2, 0),
    ("2 side by side, 1 thread each (threads=auto in a parallel sweep)", "PASSIVE", 1, 2, 0),
    ("beside 2 busy processes, 2 threads, OpenMP default", None, 2, 1, 2),
    ("beside 2 busy processes, 2 threads, passive (threads=2)", "PASSIVE", 2, 1, 2),
    ("beside 2 busy processes, threads=auto", None, "auto", 1, 2),
)


def worker(pair: str, root: str, seconds: float, threads: str) -> None:
    """Train pair on the CPU for about `seconds` after one warm-up epoch, with `threads` as fmnist-train
    sets them (auto: following the CPU's other users); print samples/s as JSON."""
    configure_threads(threads if threads == "auto" else int(threads))
    model, dataset = pair.split(":")
    cfg = config(model, dataset, root, "cpu")
    images, labels = load_split(cfg.dataset, "train", cfg.seed)
    train = TensorBatches(images[:8192], labels[:8192], cfg.batch_size,
                          Normalize(cfg.dataset.mean, cfg.dataset.std, torch.device("cpu")), shuffle=True,
                          seed=cfg.seed)
    _, _, epochs = engine_epochs(cfg, train, torch.device("cpu"), 1_000_000)
    samples, spent = 0, 0.0
    for stats in epochs:
        if stats.epoch > 1:  # the first epoch is the warm-up
            samples, spent = samples + stats.samples, spent + stats.seconds
        if spent >= seconds:
            break
    print(json.dumps({"samples_per_s": samples / spent}))


def load_rows(pair: str, root: str, seconds: float) -> list[dict[str, object]]:
    """Each case's samples/s per training, and its ratio to the same training alone with the same settings
    and to it alone with OpenMP's default (what every run got before fmnist chose)."""
    rows: list[dict[str, object]] = []
    alone: dict[tuple[str | None, int | str], float] = {}
    for label, policy, threads, trainings, busy in LOAD_CASES:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
        if policy:
            env["OMP_WAIT_POLICY"] = policy
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            procs = [subprocess.Popen([sys.executable, __file__, "--root", root, "--worker", pair,
                                       "--worker-seconds", str(seconds), "--worker-threads", str(threads)],
                                      env=env, stdout=subprocess.PIPE, text=True)
                     for _ in range(trainings)]
            rates = [json.loads(p.communicate()[0])["samples_per_s"] for p in procs]
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        if trainings == 1 and busy == 0:
            alone[policy, threads] = rates[0]
        each = median(rates)
        own = alone.get((policy, threads))  # None: the case has no run alone of its own (1 thread each)
        rows.append({"pair": pair, "case": label, "samples_per_s": each,
                     "ratio": each / own if own else None, "ratio_default": each / alone[None, 2]})
        print(f"  {pair} {label}: {each:,.0f} samples/s", file=sys.stderr)
    return rows


# ---- --ddp: the cost of DistributedDataParallel on one CPU ---------------------------------------------------

DDP_CASES = (  # (label, processes, threads each)
    ("1 process x 2 threads", 1, 2),
    ("torchrun: 2 processes x 1 thread (DDP, gloo)", 2, 1),
)


def ddp_run(pair: str, root: str, processes: int, threads: int, epochs: int, batch_size: int, out: Path) -> float:
    """One fmnist-train through the CLI (under torchrun for processes > 1); its steady samples/s (all ranks)."""
    model, dataset = pair.split(":")
    train = str(Path(sys.executable).with_name("fmnist-train"))
    command = [train] if processes == 1 else [str(Path(sys.executable).with_name("torchrun")), "--standalone",
                                              f"--nproc_per_node={processes}", "--no-python", train]
    subprocess.run([*command, f"model={model}", f"dataset={dataset}", f"dataset.root={root}", f"epochs={epochs}",
                    f"batch_size={batch_size}", f"threads={threads}", "device=cpu", "progress=false",
                    f"hydra.run.dir={out}"], check=True, capture_output=True)
    history = json.loads((out / "metrics.json").read_text())["history"]
    rates = [row["samples_per_s"] for row in history[1:] or history]  # the first epoch warms up
    return median(rates)


def ddp_rows(pair: str, root: str, rounds: int, epochs: int, batch_size: int) -> list[dict[str, object]]:
    """Both cases in interleaved rounds, the same global batch; the ratio to one process is per round."""
    import tempfile

    runs: dict[str, list[float]] = {label: [] for label, _, _ in DDP_CASES}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            for label, processes, threads in DDP_CASES:
                out = Path(tmp) / f"{round_}-{processes}"
                runs[label].append(ddp_run(pair, root, processes, threads, epochs, batch_size, out))
                print(f"  {pair} b{batch_size} {label}: {runs[label][-1]:,.0f} samples/s", file=sys.stderr)
    base = runs[DDP_CASES[0][0]]
    return [{"pair": pair, "batch_size": batch_size, "case": label, "samples_per_s": median(rates),
             "ratio": median(r / b for r, b in zip(rates, base, strict=True)), "runs": rates}
            for label, rates in runs.items()]


# ---- --sweep: a parallel --multirun against the same sweep one job at a time ---------------------------------

SWEEP = "model=mlp,cnn optimizer.lr=1e-3,3e-3 epochs=1 dataset=fashion"  # 4 jobs: two models x two rates
# The third case is the floor's measure: each job alone on one thread, as it runs side by side.
SWEEP_CASES = (("one at a time", ("hydra/launcher=basic",)), ("side by side", ()),
               ("1 thread alone", ("hydra/launcher=basic", "threads=1")))


def sweep_run(overrides: list[str], root: str, out: Path) -> tuple[float, dict[str, float]]:
    """One fmnist-train --multirun through the CLI: the whole command's wall seconds (start-up, every job, the
    summary) and each job's own seconds from its sweep summary, by its swept overrides."""
    command = [str(Path(sys.executable).with_name("fmnist-train")), "--multirun", *overrides,
               f"dataset.root={root}", "progress=false", f"hydra.sweep.dir={out}"]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench.py: the sweep failed (exit {proc.returncode}): {' '.join(command)}\n"
                         f"{proc.stderr[-2000:]}")
    with open(out / "sweep_summary.csv", newline="") as f:
        jobs = {row["swept"]: float(row["seconds"]) for row in csv.DictReader(f)}
    return wall, jobs


def sweep_rows(sweep: str, root: str, rounds: int) -> list[dict[str, object]]:
    """Every case in each round, the order reversed every other round, so a drift in the host's speed falls on
    all alike; the ratio and the floor are taken within each round.

    The floor is the ratio of the jobs' own seconds were the jobs side by side, each on one thread, never to slow
    each other down nor leave a core idle: their seconds alone on one thread over (cores x their seconds one at a
    time). It is what the machine allows: a job that gets much from a second thread alone gains little from
    sharing the cores."""
    import tempfile

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            order = SWEEP_CASES if round_ % 2 == 0 else SWEEP_CASES[::-1]
            row: dict[str, object] = {"round": round_ + 1, "first": order[0][0]}
            for label, launcher in order:
                out = Path(tmp) / f"{round_}-{SWEEP_CASES.index((label, launcher))}"
                wall, jobs = sweep_run([*sweep.split(), *launcher], root, out)
                row[label] = {"wall_s": wall, "jobs_s": jobs}
                print(f"  round {round_ + 1} {label}: {wall:.1f} s", file=sys.stderr)
            one, beside, thread = (row[label] for label, _ in SWEEP_CASES)
            row["ratio"] = beside["wall_s"] / one["wall_s"]  # type: ignore[index]
            row["floor"] = sum(thread["jobs_s"].values()) / (  # type: ignore[index]
                usable_cores() * sum(one["jobs_s"].values()))  # type: ignore[index]
            rows.append(row)
    return rows


def kept_speed(rows: list[dict[str, object]], alone: str) -> dict[str, float]:
    """Per model swept (else "all"): a job's seconds in case `alone` over its seconds side by side, the median
    over jobs and rounds: the share of that speed a job kept beside the others. Against one at a time, side by
    side gains where it is above 1/n with n jobs at once on n cores; against 1 thread alone, 1.00 means the jobs
    did not slow each other down."""
    kept: dict[str, list[float]] = {}
    for row in rows:
        base, beside = row[alone]["jobs_s"], row["side by side"]["jobs_s"]  # type: ignore[index]
        for job, seconds in base.items():
            model = next((o.partition("=")[2] for o in job.split() if o.startswith("model=")), "all")
            kept.setdefault(model, []).append(seconds / beside[job])
    return {model: median(shares) for model, shares in kept.items()}


# ---- --eval: evaluation speed against eval_batch_size --------------------------------------------------

EVAL_SIZES = "1000,500,256,128"


def eval_rows(pair: str, root: str, device: torch.device, sizes: list[int], rounds: int) -> list[dict[str, object]]:
    """Test-split images/s through train.loop.evaluate, the function training's validation and test and
    fmnist-eval run, with the model built as training builds it (untrained: the speed is the same)."""
    model, dataset = pair.split(":")
    cfg = config(model, dataset, root, device.type)
    dtype = training_precision(cfg, device)
    t = build_training(cfg, device, dtype, 1)
    runs: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            test = batches(dataclasses.replace(cfg, eval_batch_size=size), "test", device, training=False)
            evaluate(t.infer, test, t.loss_fn, cfg.dataset.num_classes, device=device, dtype=dtype)  # warm-up
            result = evaluate(t.infer, test, t.loss_fn, cfg.dataset.num_classes, device=device, dtype=dtype)
            runs[size].append(int(result.confusion.sum()) / result.seconds)
            print(f"  {pair} eval_batch_size={size}: {runs[size][-1]:,.0f} images/s", file=sys.stderr)
    return [{"pair": pair, "eval_batch_size": size, "default": size == cfg.eval_batch_size,
             "images_per_s": median(rates), "runs": rates} for size, rates in runs.items()]


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    """A markdown table; a column whose name ends in ':' is right-aligned (numbers)."""
    print("| " + " | ".join(c.rstrip(":") for c in columns) + " |")
    print("| " + " | ".join("---:" if c.endswith(":") else "---" for c in columns) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="data directory in torchvision's layout")
    parser.add_argument("--device", default="all", help="cpu, cuda or all (every device present)")
    parser.add_argument("--pairs", default=",".join(PAIRS), help="model:dataset pairs")
    parser.add_argument("--samples", type=int, default=16384, help="training images per throughput measurement")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved repetitions of every loop; the table shows medians")
    parser.add_argument("--tta-epochs", type=int, default=10, help="epochs allowed for time-to-accuracy (0: skip)")
    parser.add_argument("--accuracy-epochs", type=int, default=3,
                        help="epochs for the same-accuracy check (mlp, Fashion-MNIST; 0: skip)")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--load", action="store_true",
                        help="only the CPU under load: each pair alone, two side by side, beside two busy processes")
    parser.add_argument("--load-seconds", type=float, default=15.0, help="seconds each --load training measures")
    parser.add_argument("--records", nargs="?", const=",".join(RECORDS),
                        help="only the presets named (default: every *_speedrun and *_best) over --seeds seeds; with "
                             "fashion_speedrun, the tutorial cnn's time to 91%% on Fashion-MNIST as its reference")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per preset for --records")
    parser.add_argument("--ddp", action="store_true",
                        help="only DDP on the CPU: fmnist-train under torchrun (2 processes x 1 thread) against one "
                             "process x 2 threads, same global batch, --repeats interleaved rounds")
    parser.add_argument("--ddp-epochs", type=int, default=2, help="epochs per --ddp run (the first is warm-up)")
    parser.add_argument("--ddp-batch", type=int, default=256, help="global batch size of the --ddp runs")
    parser.add_argument("--sweep", nargs="?", const=SWEEP,
                        help="only a --multirun's wall clock, its jobs side by side (the default launcher) against "
                             f"one at a time (hydra/launcher=basic), and the floor their speed on 1 thread allows, in "
                             f"--repeats alternating rounds; the overrides default to the 4-job sweep '{SWEEP}'")
    parser.add_argument("--eval", nargs="?", const=EVAL_SIZES,
                        help="only evaluation: test-split images/s at each eval_batch_size given (default "
                             f"{EVAL_SIZES}), per pair, in --repeats interleaved rounds")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-seconds", type=float, default=15.0, help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.root, args.worker_seconds, args.worker_threads)
        return 0
    if args.sweep:
        rows = sweep_rows(args.sweep, args.root, args.repeats)
        ratios, floors = ([float(r[key]) for r in rows] for key in ("ratio", "floor"))  # type: ignore[arg-type]
        print(f"\nfmnist-train --multirun {args.sweep} ({machine()}; whole command's wall clock, start-up and "
              f"summary included; the cases alternate which goes first)\n")
        print_table(["round", "first", *(f"{label} s:" for label, _ in SWEEP_CASES), "ratio:", "floor:"],
                    [[str(r["round"]), str(r["first"]), *(f"{r[label]['wall_s']:.1f}" for label, _ in SWEEP_CASES),
                      f"{r['ratio']:.2f}", f"{r['floor']:.2f}"] for r in rows])
        print(f"\nSide by side / one at a time: median {median(ratios):.2f} of {len(ratios)} rounds "
              f"(lowest {min(ratios):.2f}, highest {max(ratios):.2f}). The floor this machine allows: median "
              f"{median(floors):.2f}, the jobs' seconds alone on 1 thread / ({usable_cores()} x their seconds one "
              f"at a time), start-up not included.\n")
        jobs = list(rows[0]["one at a time"]["jobs_s"])  # type: ignore[index]
        print_table(["job (its own seconds, median of the rounds)", *(f"{label}:" for label, _ in SWEEP_CASES)],
                    [[job, *(f"{median(r[label]['jobs_s'][job] for r in rows):.1f}" for label, _ in SWEEP_CASES)]
                     for job in jobs])
        for alone, what in (("one at a time", f"{usable_cores()} jobs at once gain where it is above "
                                              f"1/{usable_cores()}"),
                            ("1 thread alone", "1.00: the jobs did not slow each other down")):
            kept = ", ".join(f"{model} {share:.2f}" for model, share in kept_speed(rows, alone).items())
            print(f"\nEach job's speed side by side as a share of its speed {alone} (median of jobs and rounds; "
                  f"{what}): {kept}")
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "sweep": args.sweep, "rounds": rows}, indent=2))
        return 0
    if args.eval:
        device = torch.device("cuda" if args.device == "cuda" else "cpu")
        configure_threads("auto")
        sizes = [int(size) for size in args.eval.split(",")]
        rows = [row for pair in args.pairs.split(",")
                for row in eval_rows(pair, args.root, device, sizes, args.repeats)]
        print(f"\nEvaluation ({device}; {machine()}; {torch.get_num_threads()} threads; test split, medians of "
              f"{args.repeats} interleaved rounds; * the default eval_batch_size)\n")
        print_table(["model:dataset", "eval_batch_size:", "images/s:"],
                    [[str(r["pair"]), f"{r['eval_batch_size']}{' *' if r['default'] else ''}",
                      f"{r['images_per_s']:,.0f}"] for r in rows])
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "eval": rows}, indent=2))
        return 0
    if args.ddp:
        rows = [row for pair in args.pairs.split(",")
                for row in ddp_rows(pair, args.root, args.repeats, args.ddp_epochs, args.ddp_batch)]
        print(f"\nDDP on this CPU ({machine()}; fmnist-train through the "
              f"CLI; samples/s of the epochs after the first, all ranks together; medians of {args.repeats} rounds)\n")
        print_table(["model:dataset", "global batch:", "case", "samples/s:", "x one process:"],
                    [[str(r["pair"]), str(r["batch_size"]), str(r["case"]), f"{r['samples_per_s']:,.0f}",
                      f"{r['ratio']:.2f}"] for r in rows])
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return 0
    if args.records:
        device = torch.device("cuda" if args.device == "cuda" else "cpu")
        names = args.records.split(",")
        # The reference is the tutorial's recipe as the tutorial runs it: fp32, whatever this CPU's bf16 support.
        reference = (train_and_test(config("cnn", "fashion", args.root, device.type, precision="fp32"), device, 10,
                                    0.91) if "fashion_speedrun" in names else None)
        if reference is not None:  # now, not only in the table: a long run stopped early keeps it
            print(f"  tutorial cnn (fp32) to 91%: {reference}", file=sys.stderr)
        rows = records(names, args.root, device, args.seeds)
        print(f"\nSpeed presets ({device}; {machine()}; {torch.get_num_threads()} threads; training "
              f"seconds, evaluation excluded; test accuracy with the preset's TTA)\n")
        if reference is not None:
            print(f"Reference: the tutorial cnn (fp32) reaches 91% on Fashion-MNIST in {reference[0]:.1f} s "
                  f"({reference[1]} epochs, {reference[2]:.2%}).\n")
        print_table(["preset", "seeds:", "test accuracy mean:", "std:", "min:", "training seconds (mean):"],
                    [[str(r["preset"]), str(r["seeds"]), f"{r['acc_mean']:.2%}", f"{100 * r['acc_std']:.2f}",
                      f"{r['acc_min']:.2%}", f"{r['seconds_mean']:.1f}"] for r in rows])
        if args.json:
            args.json.write_text(json.dumps({"reference": reference, "records": rows}, indent=2))
        return 0
    if args.load:
        load = [row for pair in args.pairs.split(",") for row in load_rows(pair, args.root, args.load_seconds)]
        print(f"\nUnder load ({machine()}; engine b64, 8,192 images,"
              f" {args.load_seconds:.0f} s per training after a warm-up epoch)\n")
        print_table(["model:dataset", "case", "samples/s per training:", "x the same run alone:",
                     "x OpenMP default alone:"],
                    [[str(r["pair"]), str(r["case"]), f"{r['samples_per_s']:,.0f}",
                      "—" if r["ratio"] is None else f"{r['ratio']:.2f}", f"{r['ratio_default']:.2f}"]
                     for r in load])
        if args.json:
            args.json.write_text(json.dumps({"load": load}, indent=2))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.py: --device cuda was asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d != "cuda" or torch.cuda.is_available()]
    rows, tta = [], []
    for dev_name in devices:
        device = torch.device(dev_name)
        for pair in args.pairs.split(","):
            rows += throughput_rows(pair, args.root, device, args.samples, args.repeats)
        if args.tta_epochs:
            for pair, target in TARGETS.items():
                if pair not in args.pairs.split(","):
                    continue
                model, dataset = pair.split(":")
                for compile_mode, precision in tta_variants(device):
                    cfg = config(model, dataset, args.root, dev_name, compile=compile_mode, precision=precision)
                    seconds, epochs, acc = train_and_test(cfg, device, args.tta_epochs, target)
                    tta.append({"device": dev_name, "pair": pair, "target": target, "seconds": seconds,
                                "epochs": epochs, "accuracy": acc, "compile": compile_mode, "precision": precision})
                    print(f"{dev_name} {pair} {compile_mode} {precision} time to {target:.0%}: {seconds:.1f}s",
                          file=sys.stderr)

    same = accuracy_check(args.root, torch.device(devices[-1]), args.accuracy_epochs) if args.accuracy_epochs else []

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\nThroughput ({name}; {machine()}; {torch.get_num_threads()} CPU threads)\n")
    print(f"Medians of {args.repeats} interleaved rounds; 'x tutorial' is the median of each round's ratio, "
          "with the lowest and highest round in brackets.\n")
    print("| device | model:dataset | loop | samples/s | s/epoch (train split) | x tutorial | warm-up s | peak MiB |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        n_train = 45000 if r["pair"].endswith("cifar10") else 54000
        spread = "" if r["loop"].startswith("tutorial") else f" ({r['ratio_min']:.1f}-{r['ratio_max']:.1f})"
        peak = f"{r['peak_mem_mib']:,.0f}" if "peak_mem_mib" in r else ""
        print(f"| {r['device']} | {r['pair']} | {r['loop']} | {r['samples_per_s']:,.0f} | "
              f"{n_train / r['samples_per_s']:.2f} | {r['ratio']:.2f}{spread} | "
              f"{r.get('warmup_s', float('nan')):.2f} | {peak} |")
    if tta:
        print("\nTime to accuracy (training seconds, evaluation excluded; batch 64, default recipe)\n")
        print("| device | model:dataset | compile | precision | target | seconds | epochs | test accuracy |")
        print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: |")
        for t in tta:
            print(f"| {t['device']} | {t['pair']} | {t['compile']} | {t['precision']} | {t['target']:.0%} | "
                  f"{t['seconds']:.1f} | {t['epochs']} | {t['accuracy']:.2%} |")
    if same:
        print(f"\nSame accuracy: mlp on Fashion-MNIST, {args.accuracy_epochs} epochs, batch 64, Adam 1e-3 "
              f"({devices[-1]})\n")
        print_table(["loop", "test accuracy:"], [[str(r["loop"]), f"{r['accuracy']:.2%}"] for r in same])
    if args.json:
        args.json.write_text(json.dumps({"device": name, "throughput": rows, "time_to_accuracy": tta,
                                         "same_accuracy": same}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
