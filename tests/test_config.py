"""Config validation: every bad value names the key, the value and what is allowed."""

from __future__ import annotations

import pytest
import torch
from conftest import compose

from fmnist.config import validate
from fmnist.errors import UserError
from fmnist.runtime import resolve_device, resolve_precision


def test_default_config_is_valid():
    validate(compose())


@pytest.mark.parametrize(("override", "expected"), [
    ("batch_size=0", "batch_size=0 is not valid: expected an integer >= 1"),
    ("optimizer.lr=-1", "optimizer.lr=-1 is not valid: expected a number > 0"),
    ("epochs=abc", "epochs='abc' is not valid: expected an integer >= 1"),
    ("epochs=1.5", "epochs=1.5 is not valid"),
    ("dataset.val_fraction=1.0", "dataset.val_fraction=1.0 is not valid: expected a number in (0, 1)"),
    ("model.dropout=1.5", "model.dropout=1.5 is not valid"),
    ("device=gpu", "device='gpu' is not valid: expected auto, cpu, cuda, cuda:N or mps"),
    ("precision=fp64", "precision='fp64' is not valid"),
    ("progress=maybe", "progress='maybe' is not valid"),
    ("model.channels=[]", "model.channels=[] is not valid"),
    ("data.loader=dali", "data.loader='dali' is not valid: expected tensor or torchvision"),
    ("compile=jit", "compile='jit' is not valid: expected none, torch or cudagraph"),
    ("threads=0", "threads=0 is not valid"),
])
def test_bad_values_are_named(override: str, expected: str):
    with pytest.raises(UserError) as info:
        validate(compose(override))
    assert expected in str(info.value)


def test_cuda_where_there_is_none_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="device=cuda was asked for, but"):
        resolve_device("cuda")


def test_auto_device_and_precision_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    device = resolve_device("auto")
    assert device.type in ("cpu", "mps")
    assert resolve_precision("auto", torch.device("cpu")) is torch.float32
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))


def test_cudagraph_rules():
    with pytest.raises(UserError, match="fixed learning rate"):
        validate(compose("compile=cudagraph", "scheduler=cosine"))
    with pytest.raises(UserError, match="fp16"):
        validate(compose("compile=cudagraph", "precision=fp16"))


def test_cudagraph_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from fmnist.engine import make_step_runner

    with pytest.raises(UserError, match="needs a CUDA device"):
        make_step_runner("cudagraph", None, None, None, None, device=torch.device("cpu"), dtype=torch.float32)
