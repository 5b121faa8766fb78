"""Setup: every optimizer, scheduler and loss choice instantiates and does its job; memory-format policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import settings

from fmnist.config import InspectConfig, config_dir
from fmnist.errors import UserError
from fmnist.inference.restore import restore
from fmnist.train import setup
from fmnist.train.setup import (
    build_loss,
    build_model,
    build_optimizer,
    build_scheduler,
    check_model_fits,
    try_loss,
    try_optimizer,
    use_channels_last,
)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizer_instantiates_with_its_lr(name: str):
    cfg = settings(f"optimizer={name}", "optimizer.lr=0.0123")
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model.parameters(), torch.device("cpu"))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0123)


def test_sgd_takes_momentum_nesterov_and_weight_decay():
    cfg = settings("optimizer=sgd", "optimizer.momentum=0.8", "optimizer.nesterov=true", "optimizer.weight_decay=1e-4")
    group = build_optimizer(cfg, build_model(cfg).parameters(), torch.device("cpu")).param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.8, True, 1e-4)


@pytest.mark.parametrize("name", options("scheduler"))
def test_scheduler_instantiates_and_steps(name: str):
    cfg = settings(f"scheduler={name}", "epochs=4")
    optimizer = build_optimizer(cfg, build_model(cfg).parameters(), torch.device("cpu"))
    scheduler, interval = build_scheduler(cfg, optimizer, steps_per_epoch=5)
    if name == "none":
        assert scheduler is None
        return
    steps = 4 * 5 if interval == "step" else 4
    lrs = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert len(set(lrs)) > 1, "the learning rate never changed"


def test_a_cosine_schedule_shorter_than_the_run_is_named(caplog: pytest.LogCaptureFixture):
    """What a resumed cosine run trained for more epochs has: T_max stays the run's first length."""
    for overrides, warned in ((("epochs=4",), False), (("epochs=4", "scheduler.T_max=3"), True),
                              (("epochs=4", "scheduler.T_max=20", "scheduler.interval=step"), False)):
        cfg = settings("scheduler=cosine", *overrides)
        caplog.clear()
        build_scheduler(cfg, build_optimizer(cfg, build_model(cfg).parameters(), torch.device("cpu")), 5)
        assert ("past it the cosine rate rises again" in caplog.text) == warned, (overrides, caplog.text)


def test_a_schedule_that_starts_below_zero_is_refused():
    """Keys added with + pass no validation table; torch's one-cycle takes a negative div_factor and trains with
    a negative rate (gradient ascent)."""
    cfg = settings("scheduler=onecycle", "+scheduler.div_factor=-5")
    optimizer = build_optimizer(cfg, build_model(cfg).parameters(), torch.device("cpu"))
    with pytest.raises(UserError, match=r"scheduler: the learning rate would start at -0.0002; it must be"):
        build_scheduler(cfg, optimizer, steps_per_epoch=5)


def test_a_scheduler_refusal_torch_raises_as_key_error_reads_as_its_message():
    """torch refuses last_epoch >= 0 on a fresh optimizer with a multi-line KeyError, whose str() is its repr."""
    cfg = settings("scheduler=step", "+scheduler.last_epoch=3")
    optimizer = build_optimizer(cfg, build_model(cfg).parameters(), torch.device("cpu"))
    with pytest.raises(UserError) as error:
        build_scheduler(cfg, optimizer, steps_per_epoch=5)
    assert str(error.value).startswith("scheduler: param 'initial_lr' is not specified")
    assert "\\n" not in str(error.value) and '"' not in str(error.value)


@pytest.mark.parametrize(("overrides", "copies"), [
    (("optimizer=adam",), 4), (("optimizer=adam", "+optimizer.amsgrad=true"), 5), (("optimizer=adamw",), 4),
    (("optimizer=sgd", "optimizer.momentum=0"), 2), (("optimizer=sgd", "optimizer.momentum=0.9"), 3),
    (("optimizer=rmsprop",), 3), (("optimizer=rmsprop", "+optimizer.centered=true", "optimizer.momentum=0.9"), 5),
])
def test_a_model_is_sized_with_its_optimizers_state(monkeypatch: pytest.MonkeyPatch, overrides: tuple[str, ...],
                                                   copies: int):
    """Weights, gradients and the state the optimizer keeps per weight (Adam's two moments), all fp32: a model
    that fits the first two can still take the machine down at the first optimizer step."""
    cfg = settings("model=mlp", *overrides)
    n = sum(p.numel() for p in build_model(cfg).parameters())
    state = try_optimizer(cfg)
    monkeypatch.setattr(setup, "free_memory", lambda device: copies * 4 * n)
    check_model_fits(cfg, torch.device("cpu"), state)
    monkeypatch.setattr(setup, "free_memory", lambda device: copies * 4 * n - 1)
    with pytest.raises(UserError, match=f"the model has {n:,} parameters: its weights"):
        check_model_fits(cfg, torch.device("cpu"), state)


@pytest.mark.parametrize(("overrides", "message"), [
    (("+optimizer.amsgrad=maybe",), r"optimizer: its first step fails on a stand-in weight \(TypeError: .*amsgrad"),
    (("optimizer._target_=torch.optim.LBFGS", "~optimizer.betas", "~optimizer.weight_decay"),
     r"optimizer: its first step fails on a stand-in weight \(TypeError: .*closure"),
])
def test_an_optimizer_setting_only_torch_checks_fails_before_any_data(overrides: tuple[str, ...], message: str):
    """Values every rule passes, which torch refuses only at the first step (minutes in, as a traceback)."""
    with pytest.raises(UserError, match=message):
        try_optimizer(settings(*overrides))


@pytest.mark.parametrize(("overrides", "message"), [
    (("+loss.ignore_index=abc",), r"loss: on stand-in outputs \(TypeError: .*ignore_index"),
    (("loss._target_=torch.nn.MSELoss", "~loss.label_smoothing"), r"loss: on stand-in outputs \("),
])
def test_a_loss_setting_only_torch_checks_fails_before_any_data(overrides: tuple[str, ...], message: str):
    with pytest.raises(UserError, match=message):
        try_loss(settings(*overrides))


def test_class_weights_are_a_list_in_the_config_and_a_tensor_in_the_loss():
    weights = [1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0]
    cfg = settings(f"loss.weight=[{','.join(map(str, weights))}]")
    try_loss(cfg)
    assert build_loss(cfg).weight.tolist() == weights


@pytest.mark.parametrize("name", options("loss"))
def test_loss_instantiates(name: str):
    cfg = settings(f"loss={name}")
    model = build_model(cfg)
    loss = build_loss(cfg)(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_label_smoothing_is_passed_through():
    assert build_loss(settings("loss.label_smoothing=0.1")).label_smoothing == pytest.approx(0.1)


@pytest.mark.parametrize(("name", "fused"), [("adam", True), ("adamw", True), ("sgd", True), ("rmsprop", None)])
def test_fused_optimizers_on_cpu(name: str, fused: bool | None):
    cfg = settings(f"optimizer={name}")
    optimizer = build_optimizer(cfg, build_model(cfg).parameters(), torch.device("cpu"))
    assert optimizer.defaults.get("fused") is fused


def test_channels_last_auto_follows_the_measurements():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cnn = build_model(settings("model=cnn"))
    bn_cnn = build_model(settings("model=bn_cnn"))
    mlp = build_model(settings("model=mlp"))
    assert use_channels_last(cnn, cpu, "auto") and not use_channels_last(bn_cnn, cpu, "auto")
    assert use_channels_last(bn_cnn, cuda, "auto") and not use_channels_last(mlp, cuda, "auto")
    assert use_channels_last(bn_cnn, cpu, True) and not use_channels_last(cnn, cpu, False)
    assert not use_channels_last(mlp, cpu, True)


def test_eval_and_predict_run_the_model_in_the_memory_format_training_chose(trained_run: Path, tmp_path: Path):
    """An evaluation in the default format of a model trained in channels-last ran 3x slower on a 2-core Xeon
    (its max-pooling 10x). The tests' cnn is 8-16 wide: the default format under `auto`, channels-last when
    its config asks for it."""
    def last_conv_weight(ckpt: Path) -> torch.Tensor:
        model = restore(InspectConfig(ckpt=str(ckpt), device="cpu", precision=None, out_dir=None, trust=frozenset(),
                                      data_root=None, data_download=None)).model
        return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight

    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    assert ckpt["config"]["channels_last"] == "auto"
    assert not last_conv_weight(trained_run / "best.pt").is_contiguous(memory_format=torch.channels_last)
    ckpt["config"]["channels_last"] = True
    torch.save(ckpt, tmp_path / "channels_last.pt")
    assert last_conv_weight(tmp_path / "channels_last.pt").is_contiguous(memory_format=torch.channels_last)
