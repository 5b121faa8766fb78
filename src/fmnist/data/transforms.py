"""Normalisation and augmentation as batched tensor ops, plus the same recipe as torchvision transforms.

The tensor versions run on whole batches on the training device (no per-sample Python); the torchvision
versions serve the DataLoader path (data.loader=torchvision) so both paths train on the same recipe; only
that path imports torchvision (2.3-2.5 s on a 2-core CPU, most of it the torch._dynamo that torchvision.ops loads).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from fmnist.config import Augment, DatasetSpec

if TYPE_CHECKING:
    from torchvision import transforms


class Normalize:
    """uint8 (or float 0..255) images -> (x/255 - mean)/std in one multiply-add (type promotion does the cast)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images, self.scale)


def augment_batch(images: torch.Tensor, augment: Augment, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop with padding, horizontal flip, small rotation and cutout for a float batch (B, C, H, W).

    generator=None draws from the device's default generator (what a captured CUDA graph can replay).
    """
    b, c, h, w = images.shape
    dev = images.device
    if augment.crop_padding > 0:
        p = augment.crop_padding
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=dev)
        dx = torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=dev)
        rows = (dy + torch.arange(h, device=dev)).view(b, 1, h, 1)
        cols = (dx + torch.arange(w, device=dev)).view(b, 1, 1, w)
        images = padded[torch.arange(b, device=dev).view(b, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
                        rows, cols]
    if augment.hflip:
        flip = torch.rand(b, generator=generator, device=dev) < 0.5
        images = torch.where(flip.view(b, 1, 1, 1), images.flip(3), images)
    if augment.rotation > 0:
        angle = (torch.rand(b, generator=generator, device=dev) * 2 - 1) * math.radians(augment.rotation)
        cos, sin = angle.cos(), angle.sin()
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if augment.erase > 0:  # cutout: a black square, `erase` of the side, in half of the images
        side = erase_side(augment.erase, h, w)
        top = torch.randint(0, h - side + 1, (b, 1, 1), generator=generator, device=dev)
        left = torch.randint(0, w - side + 1, (b, 1, 1), generator=generator, device=dev)
        on = (torch.rand(b, generator=generator, device=dev) < ERASE_P).view(b, 1, 1)
        ys, xs = torch.arange(h, device=dev).view(1, h, 1), torch.arange(w, device=dev).view(1, 1, w)
        box = (ys >= top) & (ys < top + side) & (xs >= left) & (xs < left + side) & on
        images = images.masked_fill(box.unsqueeze(1), 0.0)
    return images


# Datasets whose classes a mirror image changes: a mirrored digit is another digit (2, 5), or none.
MIRROR_CHANGES_CLASS = frozenset({"mnist"})


def mirroring_note(dataset: DatasetSpec, tta: str, hflip: bool = False) -> str | None:
    """A line for the log where flips are asked for on digits: valid settings that silently cost accuracy (the
    mlp, 1 epoch of MNIST: 88.2% tested with tta=flip, 96.0% without)."""
    asked = [name for name, on in (("dataset.augment.hflip=true", hflip), (f"tta={tta}", "flip" in tta)) if on]
    if not asked or dataset.name not in MIRROR_CHANGES_CLASS:
        return None
    return (f"{' and '.join(asked)} mirror{'s' if len(asked) == 1 else ''} the images, and a mirrored digit is "
            f"no digit of its class: expect a lower accuracy on {dataset.name}")


def unflipped_note(augment: Augment, tta: str) -> str | None:
    """A line for the log where test-time augmentation averages in mirror images that the training never showed
    the net: they cost accuracy rather than add (the cnn, 2 epochs of Fashion-MNIST without augmentation,
    evaluated again: -6.98 points with tta=flip, -7.92 with flip_translate). Shifts are not said: without the
    random crop they cost that cnn 0.44 points, and gained mnist_speedrun's net 0.13 (docs/benchmarks.md)."""
    if "flip" not in tta or augment.hflip:
        return None
    return (f"tta={tta} averages in mirror images, which a model trained with dataset.augment.hflip=false never "
            f"saw: expect a lower accuracy than without it")


class TTA:
    """Test-time augmentation: the views of a normalised batch whose outputs evaluation averages.

    Modes as config.TTA_MODES: `flip` adds each view's mirror image; `translate` adds each view moved one
    pixel up, down, left and right, the uncovered border black (normalised), as training's random crop pads.
    A net trained on shifted and mirrored images is unsure of some images in one placement only: averaging a
    few placements corrects some of its mistakes for a few more forward passes at test time (README).
    """

    def __init__(self, mode: str, dataset: DatasetSpec) -> None:
        self.flip, self.translate = mode in ("flip", "flip_translate"), mode in ("translate", "flip_translate")
        self.black = tuple(-m / s for m, s in zip(dataset.mean, dataset.std, strict=True))

    def __bool__(self) -> bool:
        return self.flip or self.translate

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        views = [x, x.flip(3)] if self.flip else [x]
        if self.translate:
            b, c, h, w = x.shape
            black = torch.tensor(self.black, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
            for v in list(views):
                padded = black.expand(b, c, h + 2, w + 2).clone()
                padded[:, :, 1:-1, 1:-1] = v
                # sliced at (1, 1) the padded batch is the batch; at these four places, shifted one pixel
                views += [padded[:, :, dy:dy + h, dx:dx + w] for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2))]
        return views


ERASE_P = 0.5  # the share of images that get a cutout square


def erase_side(fraction: float, h: int, w: int) -> int:
    return max(1, min(h, w, round(fraction * min(h, w))))


def torchvision_transform(augment: Augment | None, image_size: int, mean: tuple[float, ...],
                          std: tuple[float, ...]
                          ) -> transforms.Compose:
    """The same recipe for PIL images in a DataLoader: augmentation (training only), ToTensor, Normalize."""
    from torchvision import transforms

    steps: list = []
    if augment is not None:
        if augment.crop_padding > 0:
            steps.append(transforms.RandomCrop(image_size, padding=augment.crop_padding))
        if augment.hflip:
            steps.append(transforms.RandomHorizontalFlip())
        if augment.rotation > 0:
            steps.append(transforms.RandomRotation(augment.rotation,
                                                   interpolation=transforms.InterpolationMode.BILINEAR))
    steps.append(transforms.ToTensor())
    if augment is not None and augment.erase > 0:  # before Normalize: the square is black, as on the tensor path
        area = (erase_side(augment.erase, image_size, image_size) / image_size) ** 2
        steps.append(transforms.RandomErasing(p=ERASE_P, scale=(area, area), ratio=(1.0, 1.0), value=0))
    steps.append(transforms.Normalize(list(mean), list(std)))
    return transforms.Compose(steps)
