"""The model classes. Each config in conf/model/ names one with `_target_` and sizes it from the dataset.

Three classes cover the models: `mlp` and `feedforward` are MLPs of different widths, `cnn` and
`bn_cnn` are conv stacks with and without BatchNorm, and `speednet` is the conv net of the speed presets.
Every model ends in logits, or in log-probabilities when the loss is NLL (`log_probs=True`), so the loss
and the output always agree.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from fmnist.errors import UserError


class Classifier(nn.Module):
    """A network `self.net` from images to class scores, plus the output convention the loss expects."""

    net: nn.Module

    def __init__(self, log_probs: bool) -> None:
        super().__init__()
        self.log_probs = log_probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.net(x)
        return F.log_softmax(scores, dim=1) if self.log_probs else scores


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask is drawn as `uniform >= p` rather than with bernoulli_.

    Same distribution, same scaling, same module in a state dict; on the CPU torch's bernoulli_ costs
    several uniform draws, enough to be a large share of the mlp's training step (figures in
    docs/benchmarks.md). Elsewhere the native fused kernel is faster, so it is used as is.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0 < self.p < 1 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        return x * torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))


def _fc_stack(sizes: list[int], num_classes: int, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for n_in, n_out in pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(Dropout(dropout))
    layers.append(nn.Linear(sizes[-1], num_classes))
    return layers


class MLP(Classifier):
    """Flatten, then Linear-ReLU(-Dropout) per hidden width, then a Linear to the classes."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, hidden: list[int],
                 dropout: float = 0.0, log_probs: bool = False) -> None:
        super().__init__(log_probs)
        sizes = [in_channels * image_size * image_size, *hidden]
        self.net = nn.Sequential(nn.Flatten(), *_fc_stack(sizes, num_classes, dropout))


class CNN(Classifier):
    """Blocks of conv3x3 (-BatchNorm) -ReLU -maxpool2, one per entry of `channels`, then an MLP head.

    Each block pools before its ReLU: ReLU never decreases, so max(relu(x)) = relu(max(x)) and the gradients
    agree too, to the bit, while the ReLU and its backward touch a quarter of the values (a training step of the
    32-64-128 cnn on a 2-core Xeon: 0.78-0.96x the time in bf16, 0.88-1.05x in fp32, three interleaved rounds).
    Parameter-free layers swap places: checkpoints keep their keys.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, channels: list[int],
                 hidden: list[int], dropout: float = 0.0, batch_norm: bool = False,
                 log_probs: bool = False) -> None:
        super().__init__(log_probs)
        size = image_size
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels:
            size //= 2
            if size == 0:
                raise UserError(f"model.channels=[{','.join(map(str, channels))}] has too many pooling blocks for "
                                f"{image_size}x{image_size} images")
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            c_in = c_out
        sizes = [c_in * size * size, *hidden]
        layers += [nn.Flatten(), *_fc_stack(sizes, num_classes, dropout)]
        self.net = nn.Sequential(*layers)


def _conv_bn_gelu(c_in: int, c_out: int, stride: int = 1, pool: str = "") -> list[nn.Module]:
    """conv-BN-GELU; `pool` "before_norm" or "after" adds a 2x2 max-pool at that place, "" none."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)]
    if pool == "before_norm":
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.GELU()]
    if pool == "after":
        layers.append(nn.MaxPool2d(2))
    return layers


class SpeedNet(Classifier):
    """The conv net of the speed presets: few multiply-adds per image, trained fast with BatchNorm and GELU.

    A stem conv (stride `stem_stride`), then one stage per further entry of `widths`, each halving the
    resolution (max-pool) before `depth` conv-BN-GELU layers; a max-pool to a `head_grid` x `head_grid` grid
    (1: global; 2 or 3 keep where in the image a feature was) and one linear layer.
    Convolving at reduced resolution from the stem on is what makes it fast on a CPU, where the full-size
    activations of a first conv at 28x28 cost more than the rest of the net (docs/benchmarks.md).
    `pool_before_norm` moves each max-pool between its conv and that conv's BN-GELU: a max-pool commutes
    with a monotone activation and with BN's positive scaling, so the net computes nearly the same function
    (only BN's batch statistics are taken after the pool) while the elementwise work at the conv's
    resolution shrinks 4x; with a full-resolution stem that work was half of the training step on a CPU.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, widths: list[int], depth: int = 1,
                 stem_stride: int = 2, head_grid: int = 1, pool_before_norm: bool = False,
                 log_probs: bool = False) -> None:
        super().__init__(log_probs)
        if (image_size // stem_stride) >> (len(widths) - 1) == 0:
            raise UserError(f"model.widths=[{','.join(map(str, widths))}] has too many pooling stages for "
                            f"{image_size}x{image_size} images")
        # One list of convs per stage (the stem is stage 0); every stage but the last ends in a max-pool.
        stages = [[(in_channels, widths[0], stem_stride)]]
        stages += [[(c_in, c_out, 1)] + [(c_out, c_out, 1)] * (depth - 1) for c_in, c_out in pairwise(widths)]
        pool = "before_norm" if pool_before_norm else "after"
        layers: list[nn.Module] = []
        for i, stage in enumerate(stages):
            for j, (c_in, c_out, stride) in enumerate(stage):
                pooled = i < len(stages) - 1 and j == len(stage) - 1
                layers += _conv_bn_gelu(c_in, c_out, stride, pool if pooled else "")
        layers += [nn.AdaptiveMaxPool2d(head_grid), nn.Flatten(), nn.Linear(widths[-1] * head_grid ** 2, num_classes)]
        self.net = nn.Sequential(*layers)
