"""Session fixtures: the tiny datasets (tests/helpers.py writes them), an isolated cache, one trained run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import FAST, cli, write_cifar, write_mnist_like


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_mnist_like(root, "MNIST", seed=1)
    write_mnist_like(root, "FashionMNIST", seed=2)
    write_cifar(root, seed=3)
    return root


@pytest.fixture(scope="session", autouse=True)
def isolated_env(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test (and every CLI it starts) reads the tiny data and keeps its cache out of $HOME."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMNIST_DATA", str(data_root))
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small cnn trained through the CLI; its run directory, shared by the eval/predict tests."""
    work = tmp_path_factory.mktemp("trained")
    cli("fmnist-train", "model=cnn", "model.channels=[8,16]", "model.hidden=[32]", "dataset=fashion", *FAST,
        "precision=fp32", "hydra.run.dir=run", cwd=work)  # fp32 on every CPU: the tests recount it without autocast
    return work / "run"
