"""The loop and the step runners in-process: resumable epochs, skipped batches, warm-up timing, evaluation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import settings

from fmnist.config import TrainConfig
from fmnist.data.batches import Batches, load_split, make_batches
from fmnist.data.transforms import TTA, Normalize
from fmnist.errors import UserError
from fmnist.train.loop import EpochStats, NonFiniteLoss, evaluate, train_epochs, train_one_epoch
from fmnist.train.setup import Training, build_training
from fmnist.train.step import EagerStep, make_step, resolve_compile

CPU = torch.device("cpu")
# Every source of randomness in a step: shuffling, augmentation and dropout.
RANDOM = ("model=mlp", "dataset=mnist", "batch_size=40", "dataset.augment.crop_padding=2",
          "dataset.augment.hflip=true", "model.dropout=0.3")


def setup(cfg: TrainConfig, *, skip_nonfinite: bool = False) -> tuple[Training, Batches, EagerStep]:
    torch.manual_seed(cfg.seed)
    batches = make_batches(cfg.dataset, "train", CPU, batch_size=cfg.batch_size, seed=cfg.seed, training=True)
    training = build_training(cfg, CPU, torch.float32, len(batches))
    step = make_step(cfg.compile, training, batches, device=CPU, dtype=torch.float32, skip_nonfinite=skip_nonfinite)
    return training, batches, step


def test_an_epoch_stopped_part_way_and_continued_ends_exactly_as_an_uninterrupted_one():
    cfg = settings(*RANDOM)
    training, batches, step = setup(cfg)
    straight = list(train_epochs(step, batches, 1, 2))
    weights = copy.deepcopy(training.model.state_dict())

    training, batches, step = setup(cfg)
    stopped = list(train_epochs(step, batches, 1, 2, after_step=lambda n, snapshot: n == 4))
    assert [s.completed for s in stopped] == [False] and stopped[0].steps == 4 and stopped[0].epoch == 1
    data_rng = batches.rng_state()  # what a checkpoint carries, with the global generators' state
    continued = list(train_epochs(step, batches, 1, 2, start=stopped[0], data_rng=data_rng))
    assert [s.epoch for s in continued] == [1, 2]
    for a, b in zip(straight, continued, strict=True):
        assert (a.loss_sum, a.correct, a.samples, a.steps, a.lr) == (b.loss_sum, b.correct, b.samples, b.steps, b.lr)
    assert all(torch.equal(weights[k], v) for k, v in training.model.state_dict().items())


def test_skip_nonfinite_skips_only_the_bad_batches():
    cfg = settings("model=mlp", "dataset=mnist", "batch_size=40")
    training, batches, _ = setup(cfg)
    loss, calls = training.loss_fn, {"n": 0}

    def sometimes_nan(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return loss(out, y) * float("nan") if calls["n"] in (2, 5) else loss(out, y)

    training.loss_fn = sometimes_nan
    step = EagerStep(training, device=CPU, dtype=torch.float32, skip_nonfinite=True)
    stats = train_one_epoch(step, batches, epoch=1)
    assert stats.skipped == 2 and stats.steps == len(batches) and stats.samples == batches.num_samples - 80
    assert all(torch.isfinite(p).all() for p in training.model.parameters())


def test_a_nan_loss_names_its_epoch_and_step():
    cfg = settings("model=mlp", "dataset=mnist", "batch_size=40", "optimizer=sgd", "optimizer.lr=1e12",
                   "optimizer.momentum=0.0")
    _, batches, step = setup(cfg)
    with pytest.raises(NonFiniteLoss, match=r"epoch 3: the training loss became NaN/inf at step \d+"):
        list(train_epochs(step, batches, 3, 4))


def test_warmup_steps_are_timed_apart_from_the_steady_state():
    cfg = settings("model=mlp", "dataset=mnist", "batch_size=40")
    training, batches, _ = setup(cfg)
    step = EagerStep(training, device=CPU, dtype=torch.float32, warmup_steps=2)
    stats = train_one_epoch(step, batches, epoch=1)
    assert stats.warmup_samples == 80 and 0 < stats.warmup_seconds < stats.seconds
    steady = (stats.samples - 80) / (stats.seconds - stats.warmup_seconds)
    assert stats.samples_per_s == pytest.approx(steady)
    again = train_one_epoch(step, batches, epoch=2)  # the warm-up happens once per runner, not per epoch
    assert again.warmup_samples == 0 and again.warmup_seconds == 0


def test_without_a_bar_a_plain_progress_line_is_logged(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture):
    from fmnist.train import loop

    cfg = settings("model=mlp", "dataset=mnist", "batch_size=40")
    _, batches, step = setup(cfg)
    monkeypatch.setattr(loop, "LOG_EVERY", 0.0)  # every step, instead of every 30 s
    with caplog.at_level("INFO", logger="fmnist"):
        train_one_epoch(step, batches, epoch=1, desc="epoch 1/3")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(batches) and "\r" not in "".join(lines)
    assert lines[0].startswith(f"epoch 1/3: step 1/{len(batches)} | ") and "samples/s | ETA " in lines[0]
    assert lines[-1].endswith("ETA 0m00s")
    caplog.clear()
    with caplog.at_level("INFO", logger="fmnist"):
        train_one_epoch(step, batches, epoch=2, progress=True)  # a bar on a terminal instead: no lines
    assert not caplog.records


def test_an_epoch_that_trained_nothing_reports_nan_not_zero():
    empty = EpochStats(0.0, 0, 0, 1.0, 3, skipped=3)
    assert empty.loss != empty.loss and empty.accuracy != empty.accuracy


def test_evaluate_counts_every_sample_once_in_the_confusion_matrix():
    cfg = settings("model=mlp", "dataset=mnist")
    training, _, _ = setup(cfg)
    test = make_batches(cfg.dataset, "test", CPU, batch_size=33, seed=cfg.seed, training=False)
    result = evaluate(training.model, test, training.loss_fn, 10, device=CPU, dtype=torch.float32, keep_probs=True)
    x = torch.cat([x for x, _ in test])
    y = torch.cat([y for _, y in test])
    with torch.no_grad():
        predicted = training.model.eval()(x).argmax(1)
    expected = torch.zeros(10, 10, dtype=torch.int64)
    for t, p in zip(y.tolist(), predicted.tolist(), strict=True):
        expected[t, p] += 1
    assert torch.equal(result.confusion, expected) and result.samples == len(y) == test.num_samples
    assert result.accuracy == pytest.approx((predicted == y).float().mean().item())
    assert torch.equal(result.probs.argmax(1), predicted) and torch.equal(result.labels, y)


def test_flip_tta_averages_the_image_and_its_mirror():
    cfg = settings("model=speednet", "dataset=fashion")
    training, _, _ = setup(cfg)
    test = make_batches(cfg.dataset, "test", CPU, batch_size=50, seed=cfg.seed, training=False)
    plain = evaluate(training.model, test, training.loss_fn, 10, device=CPU, dtype=torch.float32, keep_probs=True)
    tta = evaluate(training.model, test, training.loss_fn, 10, device=CPU, dtype=torch.float32, keep_probs=True,
                   tta=TTA("flip", cfg.dataset))
    x = torch.cat([x for x, _ in test])
    with torch.no_grad():
        model = training.model.eval()
        expected = ((model(x) + model(x.flip(3))) / 2).softmax(1)
    assert torch.allclose(tta.probs, expected, atol=1e-5) and not torch.allclose(plain.probs, expected, atol=1e-3)


@pytest.mark.parametrize("dataset", ["fashion", "cifar10"])
def test_translate_tta_averages_the_image_shifted_each_way_with_black_borders(dataset: str):
    """The shifted views, made after normalisation, are the raw images shifted with black pixels coming in
    (as training's random crop pads), then normalised; flip_translate adds the mirror image's five views."""
    cfg = settings("model=speednet", f"dataset={dataset}")
    training, _, _ = setup(cfg)
    test = make_batches(cfg.dataset, "test", CPU, batch_size=50, seed=cfg.seed, training=False)
    raw, _ = load_split(cfg.dataset, "test", cfg.seed)
    normalize = Normalize(cfg.dataset.mean, cfg.dataset.std, CPU)
    h, w = raw.shape[2:]
    padded = F.pad(raw.float(), (1, 1, 1, 1))
    shifted = [normalize(padded[:, :, dy:dy + h, dx:dx + w]) for dy in range(3) for dx in range(3)
               if (dy == 1) != (dx == 1) or dy == dx == 1]
    model = training.model.eval()
    for mode, views in (("translate", shifted), ("flip_translate", shifted + [v.flip(3) for v in shifted])):
        result = evaluate(model, test, training.loss_fn, 10, device=CPU, dtype=torch.float32, keep_probs=True,
                          tta=TTA(mode, cfg.dataset))
        with torch.no_grad():
            expected = (sum(model(v) for v in views) / len(views)).softmax(1)
        assert len(views) == (5 if mode == "translate" else 10)
        assert torch.allclose(result.probs, expected, atol=1e-5)


@pytest.mark.parametrize(("device", "dtype", "overrides", "distributed", "chosen"), [
    ("cuda", torch.bfloat16, (), False, "cudagraph"),
    ("cuda", torch.float32, ("precision=fp32",), False, "cudagraph"),
    ("cpu", torch.float32, (), False, "none"),
    ("cuda", torch.float16, (), False, "none"),  # precision=auto where a GPU has no bf16: loss scaling
    ("cuda", torch.bfloat16, (), True, "none"),  # torchrun
    ("cuda", torch.bfloat16, ("scheduler=cosine",), False, "none"),
    ("cuda", torch.bfloat16, ("on_nan=skip_batch",), False, "none"),
    ("cuda", torch.bfloat16, ("data.loader=torchvision",), False, "none"),
    ("cuda", torch.bfloat16, ("compile=torch",), False, "torch"),
    ("cuda", torch.bfloat16, ("compile=none",), False, "none"),
])
def test_compile_auto_captures_the_step_where_it_can(device: str, dtype: torch.dtype, overrides: tuple[str, ...],
                                                     distributed: bool, chosen: str):
    cfg = settings("model=mlp", "dataset=mnist", *overrides)
    resolved = resolve_compile(cfg, torch.device(device), dtype, distributed=distributed)
    assert resolved.compile == chosen and resolved.resolved["compile"] == cfg.resolved["compile"]


def test_the_captured_step_needs_a_cuda_device():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = settings("model=mlp", "dataset=mnist", "compile=cudagraph", "device=auto")
    with pytest.raises(UserError, match="needs a CUDA device"):
        setup(cfg)
