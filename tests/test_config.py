"""Config validation: every bad value names the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import compose, settings
from omegaconf import OmegaConf

from fmnist import runtime
from fmnist.config import stored_train_config, validate
from fmnist.errors import UserError
from fmnist.runtime import resolve_device, resolve_precision
from fmnist.train.setup import linear_step_macs, training_precision


def test_default_config_is_valid():
    validate(compose())


@pytest.mark.parametrize(("override", "expected"), [
    ("batch_size=0", "batch_size=0 is not valid: expected an integer in [1, 2^31)"),
    ("optimizer.lr=-1", "optimizer.lr=-1 is not valid: expected a number > 0"),
    ("epochs=abc", "epochs='abc' is not valid: expected an integer in [1, 1000000]"),
    ("epochs=1.5", "epochs=1.5 is not valid"),
    ("dataset.val_fraction=1.0", "dataset.val_fraction=1.0 is not valid: expected a number in (0, 1)"),
    ("model.dropout=1.5", "model.dropout=1.5 is not valid"),
    ("device=gpu", "device='gpu' is not valid: expected auto, cpu, cuda, cuda:N or mps"),
    ("precision=fp64", "precision='fp64' is not valid"),
    ("progress=maybe", "progress='maybe' is not valid"),
    ("model.channels=[]", "model.channels=[] is not valid"),
    ("data.loader=dali", "data.loader='dali' is not valid: expected tensor or torchvision"),
    ("compile=jit", "compile='jit' is not valid: expected auto, none, torch or cudagraph"),
    ("threads=0", "threads=0 is not valid"),
    ("seed=null", "seed=null is not valid"),  # was seed=None, Python's word for what the user wrote
    ("device=true", "device=true is not valid"),
    ("model.hidden=[64,null]", "model.hidden=[64,null] is not valid"),
])
def test_bad_values_are_named(override: str, expected: str):
    with pytest.raises(UserError) as info:
        validate(compose(override))
    assert expected in str(info.value)


def test_a_model_setting_its_class_does_not_take_names_the_models_that_have_it():
    """An experiment written for one model, run with another: its keys for the first reach the second."""
    with pytest.raises(UserError) as info:
        validate(compose("experiment=fashion_speedrun", "model=cnn"))
    assert str(info.value) == ("model.widths, model.head_grid, model.pool_before_norm are not settings of "
                               "fmnist.models.CNN (model=bn_cnn, bn_cnn_wide, cnn) but of model=speednet: choose "
                               "that model, or drop them (~model.widths ~model.head_grid ~model.pool_before_norm)")
    with pytest.raises(UserError, match=r"^model.depthh is not a setting of fmnist.models.SpeedNet \(model="
                                        r"speednet\): drop it \(~model.depthh\)$"):
        validate(compose("model=speednet", "+model.depthh=2"))
    validate(compose("experiment=fashion_speedrun", "model=cnn", "~model.widths", "~model.head_grid",
                     "~model.pool_before_norm"))
    validate(compose("model._target_=mypkg.Net", "+model.anything=1"))  # not one of fmnist's models: its own


def test_cuda_where_there_is_none_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="device=cuda was asked for, but"):
        resolve_device("cuda")


def test_auto_device_and_precision_on_cpu(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    device = resolve_device("auto")
    assert device.type in ("cpu", "mps")
    for flag, dtype in ((None, torch.float32), ("amx_bf16", torch.bfloat16), ("avx512_bf16", torch.bfloat16)):
        monkeypatch.setattr(runtime, "cpu_bf16_flag", lambda flag=flag: flag)
        assert resolve_precision("auto", torch.device("cpu")) is dtype
    assert resolve_precision("fp32", torch.device("cpu")) is torch.float32
    # the rule behind cpu_bf16_flag, on CPUs measured in docs/benchmarks.md
    avx512 = {"avx512f", "avx512_bf16"}
    assert runtime.bf16_flag("GenuineIntel", avx512 | {"amx_bf16", "amx_tile"}) == "amx_bf16"
    assert runtime.bf16_flag("AuthenticAMD", avx512) == "avx512_bf16"  # Zen 4, Zen 5
    assert runtime.bf16_flag("GenuineIntel", avx512) is None  # AMX hidden: bf16 measured 0.65-1.02x of fp32
    assert runtime.bf16_flag("AuthenticAMD", {"avx2", "fma"}) is None  # Zen 3: ~8x slower in bf16
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize(("overrides", "macs"), [
    (("model=mlp", "dataset=fashion"), 64 * (784 * 256 + 256 * 128 + 128 * 64 + 64 * 10)),  # 15.5 M
    (("model=mlp", "dataset=fashion", "batch_size=512"), 512 * (784 * 256 + 256 * 128 + 128 * 64 + 64 * 10)),
    (("model=feedforward", "dataset=fashion"), 64 * (784 * 1650 + 1650 * 512 + 512 * 138 + 138 * 10)),
    (("model=mlp", "dataset=cifar10"), 64 * (3072 * 256 + 256 * 128 + 128 * 64 + 64 * 10)),
    (("model=cnn", "dataset=fashion"), None),
    (("model=bn_cnn", "dataset=mnist"), None),
    (("model=speednet", "dataset=fashion"), None),
])
def test_auto_precision_on_amx_keeps_small_linear_steps_in_fp32(monkeypatch, overrides: tuple[str, ...],
                                                                  macs: int | None):
    """On a CPU with AMX a net of Linear layers trains in bf16 only where its step multiplies enough (the mlp at
    batch 64 ran at 0.68x of fp32 there); conv nets always do. Elsewhere the size does not matter."""
    cfg = settings(*overrides)
    assert linear_step_macs(cfg) == macs
    cpu = torch.device("cpu")
    small = macs is not None and macs < runtime.AMX_MIN_LINEAR_STEP_MACS
    monkeypatch.setattr(runtime, "cpu_bf16_flag", lambda: "amx_bf16")
    assert training_precision(cfg, cpu) is (torch.float32 if small else torch.bfloat16)
    assert training_precision(cfg, cpu, "bf16") is torch.bfloat16  # asked for: never second-guessed
    monkeypatch.setattr(runtime, "cpu_bf16_flag", lambda: "avx512_bf16")  # Zen 4: the mlp gained 1.19x in bf16
    assert training_precision(cfg, cpu) is torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_bf16_flag", lambda: None)
    assert training_precision(cfg, cpu) is torch.float32


def test_bf16_asked_for_on_a_cpu_that_emulates_it_is_warned_about(monkeypatch, caplog):
    """A BatchNorm-GELU net ran ~8x slower in bf16 on an AMD EPYC without AMX or AVX-512 BF16: precision=bf16
    there is honoured, and the log says what it costs."""
    cfg, cpu = settings("model=cnn", "dataset=fashion"), torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_bf16_flag", lambda: None)
    assert training_precision(cfg, cpu, "bf16") is torch.bfloat16
    assert "precision=bf16 is emulated on this CPU" in caplog.text
    caplog.clear()
    monkeypatch.setattr(runtime, "cpu_bf16_flag", lambda: "amx_bf16")
    assert training_precision(cfg, cpu, "bf16") is torch.bfloat16
    assert "emulated" not in caplog.text


def test_auto_precision_keeps_a_checkpoints_own_where_the_hardware_computes_it(monkeypatch):
    """Evaluating or resuming a checkpoint on another kind of machine (or after the rule changed) computes in
    the precision training recorded, unless this device could only emulate it."""
    cfg, cpu = settings("model=mlp", "dataset=fashion"), torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_bf16_flag", lambda: "amx_bf16")
    assert training_precision(cfg, cpu) is torch.float32  # the rule alone, for a small Linear step on AMX
    assert training_precision(cfg, cpu, trained="bf16") is torch.bfloat16  # e.g. trained on a Zen 4
    assert training_precision(settings("model=cnn"), cpu, trained="fp32") is torch.float32
    assert training_precision(cfg, cpu, "fp32", trained="bf16") is torch.float32  # asked for on the command line
    monkeypatch.setattr(runtime, "cpu_bf16_flag", lambda: None)  # bf16 emulated: ~8x slower on a Zen 3
    assert training_precision(cfg, cpu, trained="bf16") is torch.float32
    assert training_precision(cfg, cpu, trained="fp16") is torch.float32  # fp16 is CUDA's
    assert [runtime.precision_name(d) for d in runtime.PRECISIONS.values()] == list(runtime.PRECISIONS)


class NeedsRealNumbers(torch.nn.Module):
    """A model of a user's own whose initialisation reads a value: it cannot be built on the meta device."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, log_probs: bool = False) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(in_channels * image_size * image_size, num_classes)
        self.scale = float(self.fc.weight.abs().max().item())


def test_a_model_that_cannot_be_sized_on_the_meta_device_keeps_the_default_precision(monkeypatch):
    cfg = settings("model=mlp")
    cfg = dataclasses.replace(cfg, model={"_target_": f"{__name__}.NeedsRealNumbers", "in_channels": 1,
                                          "image_size": 28, "num_classes": 10})
    assert linear_step_macs(cfg) is None
    monkeypatch.setattr(runtime, "cpu_bf16_flag", lambda: "amx_bf16")
    assert training_precision(cfg, torch.device("cpu")) is torch.bfloat16


def test_a_multirun_sizes_its_jobs_to_the_cpu_cores_and_runs_gpu_jobs_one_at_a_time():
    """The default launcher: cores / threads jobs at once on the CPU (Optuna asks for as many trials per
    batch); one job at a time where the jobs train on a GPU, which they would have to share."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from fmnist.config import CONFIG_DIR, usable_cores

    def launched(*overrides: str) -> tuple[int, int | None]:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
        return cfg.hydra.launcher.n_jobs, cfg.hydra.sweeper.get("n_jobs")

    cores = usable_cores()
    on_cpu = cores if not (torch.cuda.is_available() or torch.backends.mps.is_available()) else 1
    assert launched() == (on_cpu, None)
    assert launched("device=cpu", "threads=2") == (max(1, cores // 2), None)
    assert launched("device=cpu", "threads=1") == (cores, None)
    assert launched("device=cuda") == (1, None)
    assert launched("device=cpu", "hparams_search=optuna") == (cores, cores)


def test_a_sweep_asks_torch_for_a_gpu_only_where_a_gpu_driver_is_present(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    """On Linux a GPU's driver leaves a device file; without one the launcher is sized without importing torch,
    with one (or off Linux) torch is asked, as device=auto will be."""
    from fmnist import config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what torch would say: a GPU
    monkeypatch.setattr(config.sys, "platform", "linux")
    monkeypatch.setattr(config, "GPU_DEVICE_FILES", (str(tmp_path / "nvidiactl"),))
    assert not config._has_accelerator() and config.sweep_jobs("auto", "auto") >= 1
    (tmp_path / "nvidiactl").touch()
    assert config._has_accelerator() and config.sweep_jobs("auto", "auto") == 1
    (tmp_path / "nvidiactl").unlink()
    monkeypatch.setattr(config.sys, "platform", "darwin")
    assert config._has_accelerator()


def test_a_one_cycle_schedule_lasts_the_run():
    validate(compose("scheduler=onecycle", "epochs=3"))  # its epochs follow the run's
    validate(compose("scheduler=onecycle", "epochs=3", "scheduler.epochs=5"))  # ending partway through the cycle
    with pytest.raises(UserError, match=r"epochs=3 runs past the end of the one-cycle schedule \(scheduler.epochs=2\)"):
        validate(compose("scheduler=onecycle", "epochs=3", "scheduler.epochs=2"))


def test_a_stored_config_leaves_out_keys_no_one_reads_but_an_override_cannot_add_one():
    stored = OmegaConf.to_container(compose("+dataset.limit=5", "+dataset.augment.bogus=1"))
    cfg = stored_train_config(stored, {})
    assert "limit" not in cfg.resolved["dataset"] and "bogus" not in cfg.resolved["dataset"]["augment"]
    with pytest.raises(UserError, match="dataset.limit is not a setting fmnist-train reads"):
        validate(compose("+dataset.limit=5"))
    with pytest.raises(UserError, match=r"data.loadr is not a setting fmnist-train reads \(did you mean data.loader"):
        stored_train_config(stored, {"data.loadr": "tensor"})
    validate(compose("+note=baseline"))  # a key of the user's own at the top level: the run's record


def test_cudagraph_rules():
    with pytest.raises(UserError, match="fixed learning rate"):
        validate(compose("compile=cudagraph", "scheduler=cosine"))
    with pytest.raises(UserError, match="fp16"):
        validate(compose("compile=cudagraph", "precision=fp16"))
    with pytest.raises(UserError, match="needs data.loader=tensor"):
        validate(compose("compile=cudagraph", "data.loader=torchvision"))
    with pytest.raises(UserError, match="needs a CUDA device, not device=cpu"):
        validate(compose("compile=cudagraph", "device=cpu"))


def test_class_weights_need_one_per_class():
    validate(compose(f"loss.weight=[{','.join(['1.0'] * 10)}]"))
    with pytest.raises(UserError, match=r"loss.weight has 3 class weights but dataset.num_classes=10"):
        validate(compose("loss.weight=[1,2,3]"))


def test_every_combination_rule_of_eval_and_predict_lives_in_config():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from fmnist.config import CONFIG_DIR, eval_config, predict_config

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        both = hydra_compose(config_name="predict", overrides=["image=x.png", "index=3"])
        foreign = hydra_compose(config_name="eval", overrides=["+dataset.name=mnist"])
        fine = hydra_compose(config_name="eval", overrides=["split=val", "dataset.root=/data"])
    with pytest.raises(UserError, match="either image=FILE or index=N, not both"):
        predict_config(both)
    with pytest.raises(UserError, match=r"dataset.name cannot be changed at eval time \(only dataset.root, "):
        eval_config(foreign)
    settings = eval_config(fine)
    assert (settings.split, settings.data_root, settings.data_download, settings.trust) == ("val", "/data", None,
                                                                                           frozenset())


PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_every_experiment_preset_is_a_valid_config(name: str):
    from fmnist.config import train_config

    cfg = train_config(compose(f"experiment={name}"))
    if name.endswith("speedrun"):
        assert cfg.model["_target_"] == "fmnist.models.SpeedNet" and cfg.optimizer["nesterov"] is True
        assert cfg.tta in (("none", "translate") if cfg.dataset.name == "mnist" else ("flip", "flip_translate"))
        assert not (cfg.dataset.name == "mnist" and cfg.dataset.augment.hflip)  # a mirrored digit is another digit


def test_typed_settings_carry_every_validated_value():
    from fmnist.config import Augment, train_config

    cfg = train_config(compose("dataset=cifar10", "dataset.augment.hflip=true", "trust=[a.B]", "threads=3"))
    assert cfg.dataset.augment == Augment(crop_padding=0, hflip=True, rotation=0.0, erase=0.0)
    assert cfg.dataset.augment.enabled
    assert cfg.dataset.num_classes == 10 and cfg.dataset.mean == (0.4914, 0.4822, 0.4465)
    assert (cfg.trust, cfg.threads, cfg.loader, cfg.resume) == (frozenset({"a.B"}), 3, "tensor", None)
    assert cfg.model["_target_"] == "fmnist.models.CNN" and cfg.resolved["dataset"]["name"] == "cifar10"


# Every key of the validation table with bad values of each kind: wrong type, out of range, NaN/inf, huge.
NAN, INF, HUGE = float("nan"), float("inf"), 2**70
BAD_VALUES = {
    "epochs": ["abc", 0, -1, 1.5, HUGE, True, [1]],
    "batch_size": ["abc", 0, -3, 2.0, HUGE, None],
    "eval_batch_size": ["abc", 0, HUGE],
    "seed": ["abc", -1, HUGE, 1.5],
    "device": ["gpu", 1, "cuda:x", None],
    "precision": ["fp64", 16, None],
    "compile": ["jit", True],
    "channels_last": ["yes", 1],
    "num_workers": [-1, "abc", HUGE],
    "threads": [0, -1, "abc", HUGE, 1.5],
    "progress": ["maybe", 2],
    "data.loader": ["dali", 1],
    "resume": ["", 5],
    "checkpoint_every_steps": [-1, "abc", HUGE],
    "on_nan": ["ignore", 0],
    "tta": ["mirror", 1, None],
    "skip_batch_limit": [-0.1, 1.5, NAN, INF, "abc"],
    "trust": ["mypkg.Net", ["not a name"], [1]],
    "dataset.name": ["svhn", 1],
    "dataset.root": [5, ["a"]],
    "dataset.download": ["yes", 1],
    "dataset.num_classes": [1, "ten", HUGE],
    "dataset.classes": ["abc", ["only-one"], ["$x$"] * 10, ["a\nb"] * 10, [1] * 10],
    "dataset.channels": [2, "1", 0],
    "dataset.image_size": [0, HUGE, "28"],
    "dataset.mean": [[NAN], [INF], ["a"], [], 0.5],
    "dataset.std": [[0.0], [-1.0], [NAN], [INF], []],
    "dataset.val_fraction": [0.0, 1.0, NAN, INF, "abc"],
    "dataset.augment.crop_padding": [-1, HUGE, "2"],
    "dataset.augment.hflip": ["yes", 1],
    "dataset.augment.rotation": [-1.0, 181.0, NAN, INF],
    "dataset.augment.erase": [-0.1, 1.0, NAN, "abc"],
    "model.hidden": ["abc", [0], [-5], [HUGE], [1.5]],
    "model.channels": [[], [0], [HUGE], "32"],
    "model.dropout": [1.0, -0.1, NAN, INF],
    "model.batch_norm": ["yes", 1],
    "model.widths": [[], [0], "24", [HUGE]],
    "model.depth": [0, 65, "2", 1.5],
    "model.stem_stride": [0, 5, "2"],
    "model.head_grid": [0, 9, "1"],
    "model.pool_before_norm": ["yes", 1],
    "optimizer.lr": [0.0, -1.0, NAN, INF, "abc"],
    "optimizer.weight_decay": [-1.0, NAN, INF],
    "optimizer.momentum": [1.0, -0.5, NAN],
    "optimizer.nesterov": ["yes", 1],
    "optimizer.betas": [[0.9], [0.9, 1.0], [0.9, "a"], 0.9, [NAN, 0.9], [0.9, 0.99, 0.999]],
    "optimizer.alpha": [-0.1, 1.5, NAN, "abc"],
    "scheduler.interval": ["batch", 1],
    "scheduler.step_size": [0, HUGE, "3"],
    "scheduler.gamma": [0.0, 1.5, NAN],
    "scheduler.T_max": [0, -1, 1.5, HUGE],
    "scheduler.eta_min": [-1.0, NAN, INF, "abc"],
    "scheduler.max_lr": [0.0, -3.0, NAN, INF],
    "scheduler.epochs": [0, 1.5, "3"],
    "scheduler.pct_start": [-0.1, 1.0, 2, NAN],
    "loss.label_smoothing": [1.0, -0.1, NAN, INF],
    "loss.weight": [[-1.0] * 10, ["a"] * 10, 1.0, [NAN] * 10, [INF] * 10, []],
    "loss.reduction": ["sum", "none", 1],
    "logger": ["tensorboard", {"wandb": {}}, 5],
    "logger.tensorboard.log_dir": [5, ["a"]],
    "logger.tensorboard.every_steps": [0, "abc", 1.5],
    "logger.mlflow.tracking_uri": ["", 5],
    "logger.mlflow.experiment": ["", 5],
    "logger.mlflow.log_checkpoint": ["yes", 1],
}


def test_loggers_compose_one_or_several_and_a_missing_package_names_its_extra(monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    from fmnist import config
    from fmnist.config import train_config

    assert train_config(compose()).loggers == {"csv": {}}
    both = train_config(compose("logger=[csv,tensorboard,mlflow]")).loggers
    assert set(both) == {"csv", "tensorboard", "mlflow"} and both["tensorboard"]["every_steps"] == 50
    assert set(train_config(compose("logger=tensorboard")).loggers) == {"tensorboard"}
    real = importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    with pytest.raises(UserError, match=r"logger=mlflow needs the mlflow package.*pip install 'fmnist\[mlflow\]'"):
        train_config(compose("logger=[csv,mlflow]"))


def test_every_validated_key_has_bad_values_in_the_table():
    from fmnist.config import TRAIN_RULES

    assert sorted(BAD_VALUES) == sorted(rule.key for rule in TRAIN_RULES)


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, values in BAD_VALUES.items() for v in values],
                         ids=lambda x: repr(x)[:30])
def test_each_bad_value_is_a_one_line_error_naming_its_key(key: str, value):
    from omegaconf import OmegaConf

    cfg = compose("optimizer=sgd", "scheduler=step")  # every optional key present
    OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(UserError) as info:
        validate(cfg)
    message = str(info.value)
    assert "\n" not in message and key in message, message
