"""Every model on every dataset: output shape, the loss/output convention, and that it can learn."""

from __future__ import annotations

import pytest
import torch
from helpers import settings

from fmnist.config import config_dir
from fmnist.train.setup import build_loss, build_model, build_optimizer

MODELS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
DATASETS = ["mnist", "fashion", "cifar10"]


def test_the_four_required_models_exist():
    assert {"mlp", "cnn", "bn_cnn", "feedforward"} <= set(MODELS)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model_name", MODELS)
def test_model_shape_and_one_step_lowers_loss(model_name: str, dataset: str):
    cfg = settings(f"model={model_name}", f"dataset={dataset}")
    torch.manual_seed(0)
    model = build_model(cfg)
    c, s = cfg.dataset.channels, cfg.dataset.image_size
    x = torch.randn(16, c, s, s)
    y = torch.arange(16) % 10
    assert model(x).shape == (16, 10)
    loss_fn = build_loss(cfg)
    optimizer = build_optimizer(cfg, model.parameters(), torch.device("cpu"))
    model.train()
    torch.manual_seed(1)
    before = loss_fn(model(x), y).item()
    for _ in range(3):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    torch.manual_seed(1)  # same dropout masks as the first measurement
    after = loss_fn(model(x), y).item()
    assert after < before


def test_feedforward_is_the_tutorial_network():
    model = build_model(settings("model=feedforward", "dataset=cifar10"))
    widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [1650, 512, 138, 10]


def test_cnn_variant_is_one_override_away():
    model = build_model(settings("model=cnn", "model.channels=[8,16]", "model.hidden=[256,128,64]"))
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert convs == [8, 16] and fcs == [256, 128, 64, 10]


def test_bn_cnn_has_batchnorm_after_each_conv():
    model = build_model(settings("model=bn_cnn", "dataset=mnist"))
    kinds = [type(m).__name__ for m in model.net]
    assert kinds[:4] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"]
    assert kinds.count("BatchNorm2d") == 2


@pytest.mark.parametrize("overrides", [("model=cnn",), ("model=bn_cnn", "dataset=mnist")])
def test_cnn_blocks_compute_conv_relu_pool_to_the_bit(overrides: tuple[str, ...]):
    """The blocks pool before their ReLU (faster): the same outputs and gradients, bit for bit, as the usual
    conv (-BN) -ReLU -pool order, and the same parameter names, so every checkpoint still loads."""
    torch.manual_seed(0)
    model = build_model(settings(*overrides)).train()
    layers = list(model.net)
    reference = [*layers]
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, torch.nn.MaxPool2d) and isinstance(layers[i + 1], torch.nn.ReLU):
            reference[i], reference[i + 1] = layers[i + 1], layer
    assert reference != layers
    usual = torch.nn.Sequential(*reference)
    assert list(usual.state_dict()) == list(model.net.state_dict())
    x = torch.randn(16, *model.net[0].weight.shape[1:2], 28, 28)
    outputs = []
    for net in (model.net, usual):
        torch.manual_seed(1)  # dropout's mask alike
        out = net(x)
        grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
        outputs.append((out, grads))
    (out, grads), (ref_out, ref_grads) = outputs
    assert torch.equal(out, ref_out)
    assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads, strict=True))


def test_speednet_layout_keeps_its_checkpoint_indices():
    """The conv/BN/GELU/pool order (and so the state-dict keys of saved checkpoints) of the default layout."""
    model = build_model(settings("model=speednet", "model.widths=[8,16]", "model.depth=2"))
    kinds = [type(m).__name__ for m in model.net]
    block = ["Conv2d", "BatchNorm2d", "GELU"]
    assert kinds == [*block, "MaxPool2d", *block, *block, "AdaptiveMaxPool2d", "Flatten", "Linear"]


def test_speednet_pool_before_norm_computes_the_same_function():
    """Max-pool commutes with BN (positive scale) and GELU where GELU increases: with BN mapping every value
    into that range (small scale, shift 5), pooling before the norm gives the default layout's output."""
    nets = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        nets.append(build_model(settings("model=speednet", "model.widths=[8,16,32]", "model.depth=2",
                                         "model.stem_stride=1", f"model.pool_before_norm={flag}")))
    after, before = nets
    assert [type(m).__name__ for m in before.net][:4] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "GELU"]
    for net in nets:
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            torch.nn.init.constant_(bn.weight, 0.01)
            torch.nn.init.constant_(bn.bias, 5.0)
        net.eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(after(x), before(x), atol=1e-5)


def test_nll_loss_makes_the_model_output_log_probabilities():
    cfg = settings("model=mlp", "loss=nll")
    out = build_model(cfg)(torch.randn(4, 1, 28, 28))
    assert torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)
    logits = build_model(settings("model=mlp"))(torch.randn(4, 1, 28, 28))
    assert not torch.allclose(logits.exp().sum(1), torch.ones(4), atol=1e-3)


def test_nll_and_cross_entropy_agree_on_the_same_weights():
    torch.manual_seed(0)
    ce_model = build_model(settings("model=mlp"))
    nll_model = build_model(settings("model=mlp", "loss=nll"))
    nll_model.load_state_dict(ce_model.state_dict())
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    ce_model.eval()
    nll_model.eval()
    ce = build_loss(settings("loss=cross_entropy"))(ce_model(x), y)
    nll = build_loss(settings("loss=nll"))(nll_model(x), y)
    assert torch.allclose(ce, nll, atol=1e-6)


def test_dropout_keeps_torch_semantics():
    """The CPU mask drawn from uniforms: keep rate 1-p, kept values scaled by 1/(1-p), gradient = mask."""
    from fmnist.models import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.3)
    x = torch.ones(200, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())
    drop.eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
