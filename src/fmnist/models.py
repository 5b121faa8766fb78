"""The model classes. Each config in conf/model/ names one with `_target_` and sizes it from the dataset.

Two classes cover the four models: `mlp` and `feedforward` are MLPs of different widths, `cnn` and
`bn_cnn` are conv stacks with and without BatchNorm. Every model ends in logits, or in log-probabilities
when the loss is NLL (`log_probs=True`), so the loss and the output always agree.
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
    """Blocks of conv3x3 (-BatchNorm) -ReLU -maxpool2, one per entry of `channels`, then an MLP head."""

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
                raise UserError(f"model.channels={list(channels)} has too many pooling blocks for "
                                f"{image_size}x{image_size} images")
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        sizes = [c_in * size * size, *hidden]
        layers += [nn.Flatten(), *_fc_stack(sizes, num_classes, dropout)]
        self.net = nn.Sequential(*layers)
