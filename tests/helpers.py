"""What the tests share: tiny datasets written in the real on-disk formats, the CLI run as a user runs it,
and the training config composed as fmnist-train composes it.

MNIST and Fashion-MNIST: gzipped IDX files in ROOT/{MNIST,FashionMNIST}/raw. CIFAR-10: pickled batches
in ROOT/cifar-10-batches-py. Each class draws a bright square at its own place over noise, so every
model can learn the data in a few steps and accuracies are far from chance.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import forked_cli
import numpy as np
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from fmnist.config import CONFIG_DIR, TrainConfig, train_config

N_TRAIN = {"idx": 400, "cifar": 250}
N_TEST = 100
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Small but real settings for CLI runs on the tiny data: seconds on 2 CPU cores.
FAST = ("epochs=2", "batch_size=32", "progress=false")


def make_images(n: int, size: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, channels, size, size) uint8 images and labels 0..9: class k lights up cell k of a 4x3 grid."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, channels, size, size), dtype=np.uint8)
    cell = size // 4
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 4)
        images[i, :, r * cell + 1:(r + 1) * cell + 1, c * cell:(c + 1) * cell] = 200 + rng.integers(0, 55)
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (big-endian header, uint8 payload), gzipped like the official archives."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist_like(root: Path, folder: str, seed: int) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n, s in (("train", N_TRAIN["idx"], seed), ("t10k", N_TEST, seed + 1)):
        images, labels = make_images(n, 28, 1, s)
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)


def write_cifar(root: Path, seed: int) -> None:
    """Protocol-2 pickles with the official keys: data (N x 3072 uint8, R/G/B planes), labels, meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = make_images(N_TRAIN["cifar"], 32, 3, seed)
    per_batch = N_TRAIN["cifar"] // 5
    batches = [(f"data_batch_{i + 1}", slice(i * per_batch, (i + 1) * per_batch)) for i in range(5)]
    test_images, test_labels = make_images(N_TEST, 32, 3, seed + 1)
    for name, data, target in [(n, images[s], labels[s]) for n, s in batches] + [("test_batch", test_images,
                                                                                     test_labels)]:
        entry = {"batch_label": name, "labels": [int(x) for x in target], "data": data.reshape(len(data), -1),
                 "filenames": [f"{name}_{i}.png" for i in range(len(data))]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)


def console_script(tool: str) -> str:
    """The installed console script: beside this Python (a venv), else on PATH (a `pip install --target`)."""
    beside = Path(sys.executable).with_name(tool)
    found = str(beside) if beside.exists() else shutil.which(tool)
    if found is None:
        raise AssertionError(f"{tool} is not installed: pip install -e . first")
    return found


def cli(tool: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an fmnist console script the way a user would, from `cwd` (forked from a process that has imported
    torch already unless FMNIST_TEST_FORK=0: forked_cli.py says what that does and does not change)."""
    argv = [console_script(tool), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    if forked_cli.enabled():
        proc = forked_cli.run(argv, cwd=cwd, env=env, timeout=300)
    else:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def torchrun_launcher(nproc: int = 2) -> list[str]:
    """`torchrun --standalone --nproc_per_node=N`, to be followed by what each rank runs."""
    launcher = Path(sys.executable).with_name("torchrun")
    command = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return [*command, "--standalone", f"--nproc_per_node={nproc}"]


def torchrun_command(*args: str, nproc: int = 2) -> list[str]:
    """`torchrun --standalone --nproc_per_node=N --no-python fmnist-train ARGS`, as the README says."""
    return [*torchrun_launcher(nproc), "--no-python", console_script("fmnist-train"), *args]


def torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """A distributed fmnist-train run that must succeed."""
    proc = subprocess.run(torchrun_command(*args, nproc=nproc), cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """A user's mistake as the CLI contract says: exit code 2, no traceback, one `TOOL: error:` line, the last."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(("fmnist-train: error:", "fmnist-eval: error:",
                                                          "fmnist-predict: error:"))]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


def compose(*overrides: str) -> DictConfig:
    """The training config as fmnist-train would compose it, for in-process tests."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def settings(*overrides: str) -> TrainConfig:
    """The validated, typed training config that fmnist-train would run."""
    return train_config(compose(*overrides))


def assert_real_png(path: Path, min_size: int = 200) -> None:
    """A PNG a person could read: big enough, and not one flat colour."""
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) >= min_size
        extrema = img.convert("L").getextrema()
        assert extrema[0] < extrema[1], f"{path} is a blank image"
