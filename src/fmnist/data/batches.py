"""Splits and batches for training and evaluation: a device-resident tensor path (default) and torchvision's
DataLoader.

Both yield (images, labels) already normalised, in the same seeded order for a given (seed, epoch), so a
run is reproducible and a resumed run sees the data in the order the uninterrupted one would have.

In a distributed run each rank iterates its share (`Shard`): for training, every rank draws the same seeded
permutation and takes every world-size-th index of it, so that one step's batches across the ranks are
exactly the single-process batch at that step (a short last batch aside); for evaluation, a contiguous
block of the split, so that each image is counted once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from fmnist.config import Augment, DatasetSpec
from fmnist.data.layout import LAYOUTS
from fmnist.data.transforms import Normalize, augment_batch, torchvision_transform
from fmnist.errors import UserError


@dataclass(frozen=True)
class Shard:
    """The part of every split that one rank of `size` iterates (rank 0 of 1: all of it)."""

    rank: int = 0
    size: int = 1

    def block(self, n: int) -> tuple[int, int]:
        """This rank's contiguous [start, stop) of n evaluation samples: each sample in exactly one block."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    def strided(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's share of a training order: padded (by repeating its start) to a multiple of the
        world size, so that every rank takes the same number of steps, then every size-th element."""
        if self.size == 1:
            return order
        pad = -len(order) % self.size
        return torch.cat([order, order[:pad]])[self.rank::self.size]


class Batches(Protocol):
    """What the engine iterates: batches of (images, labels), a length, and a per-epoch reshuffle."""

    num_samples: int  # of the whole split, all ranks together

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def iter_from(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def set_epoch(self, epoch: int) -> None: ...

    def rng_state(self) -> torch.Tensor | None:
        """State of the loader's own generator mid-epoch (None if it has none), for exact resumption."""

    def set_rng_state(self, state: torch.Tensor | None) -> None: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling/augmentation seed of one epoch: a function of (seed, epoch) alone, so resuming is exact."""
    return (seed * 1_000_003 + epoch) % 2**63


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of the official training set into train and validation indices."""
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise UserError(f"dataset.val_fraction={val_fraction} leaves no training images out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class TensorBatches:
    """Whole split as uint8 on the device; shuffle, gather, augment and normalise as batched tensor ops."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, normalize: Normalize, *,
                 shuffle: bool, seed: int, augment: Augment | None = None, shard: Shard = Shard()) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.normalize = batch_size, normalize
        self.shuffle, self.seed, self.augment, self.shard = shuffle, seed, augment, shard
        self.num_samples = len(labels)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Fix this epoch's order and start its augmentation generator (seeded by seed and epoch alone)."""
        self.epoch = epoch
        self.augment_rng = None
        if self.augment is not None:
            self.augment_rng = torch.Generator(device=self.images.device)
            self.augment_rng.manual_seed(epoch_seed(self.seed, epoch) + 1)

    def rng_state(self) -> torch.Tensor | None:
        return self.augment_rng.get_state() if self.augment_rng is not None else None

    def set_rng_state(self, state: torch.Tensor | None) -> None:
        if self.augment_rng is not None and state is not None:
            self.augment_rng.set_state(state)

    def __len__(self) -> int:
        if self.shuffle:
            per_rank = math.ceil(self.num_samples / self.shard.size)
        else:
            start, stop = self.shard.block(self.num_samples)
            per_rank = stop - start
        return math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of this epoch from batch `step` on (a resumed epoch skips what was done)."""
        if not self.shuffle:  # evaluation: contiguous slices of this rank's block, no gather
            first, stop = self.shard.block(self.num_samples)
            for start in range(first + step * self.batch_size, stop, self.batch_size):
                end = min(start + self.batch_size, stop)
                yield self.prepare(self.images[start:end], self.augment_rng), self.labels[start:end]
            return
        for idx in self.index_batches(step):
            yield self.gather(idx, self.augment_rng)

    def index_batches(self, step: int = 0) -> Iterator[torch.Tensor]:
        """This epoch's shuffled order, batch by batch from batch `step`, as index tensors on the device."""
        cpu_gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = self.shard.strided(torch.randperm(self.num_samples, generator=cpu_gen)).to(self.images.device)
        yield from order.split(self.batch_size)[step:]

    def gather(self, idx: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch at `idx`, ready for the model. Pure tensor ops: a CUDA graph can capture it.

        index_select copies whole rows: on the CPU much faster than advanced indexing (`images[idx]`; see
        docs/benchmarks.md).
        """
        return self.prepare(self.images.index_select(0, idx), generator), self.labels.index_select(0, idx)

    def prepare(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.augment is not None:
            images = augment_batch(images.float(), self.augment, generator)
        return self.normalize(images)


class TorchvisionBatches:
    """torchvision Dataset + DataLoader with PIL transforms: the reference path, for custom transforms."""

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int, *, shuffle: bool, seed: int,
                 num_workers: int, pin_memory: bool, shard: Shard = Shard()) -> None:
        self.seed, self.order_rng = seed, torch.Generator()
        self.num_samples = len(dataset)  # type: ignore[arg-type]
        self.sampler: DistributedSampler | None = None
        if shard.size > 1 and shuffle:  # each rank its share of one seeded permutation per epoch
            self.sampler = DistributedSampler(dataset, num_replicas=shard.size, rank=shard.rank, shuffle=True,
                                              seed=seed)
        elif shard.size > 1:  # evaluation: a contiguous block (the sampler would count padded images twice)
            dataset = Subset(dataset, range(*shard.block(self.num_samples)))
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and self.sampler is None,
                                 sampler=self.sampler, generator=self.order_rng, num_workers=num_workers,
                                 pin_memory=pin_memory, persistent_workers=num_workers > 0)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.order_rng.manual_seed(epoch_seed(self.seed, epoch))
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def rng_state(self) -> torch.Tensor | None:
        return None  # the order is a function of (seed, epoch); PIL transforms draw from the global generator

    def set_rng_state(self, state: torch.Tensor | None) -> None:
        pass

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.loader)

    def iter_from(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from `step` on: the same seeded order, the skipped batches drawn and dropped."""
        return itertools.islice(iter(self.loader), step, None)


def split_members(dataset: DatasetSpec, split: str, n_official: int, seed: int) -> torch.Tensor | None:
    """Indices of `split` within its official set: train and val partition the official training set
    (seeded); test is the whole official test set (None)."""
    if split == "test":
        return None
    train_idx, val_idx = split_indices(n_official, dataset.val_fraction, seed)
    return train_idx if split == "train" else val_idx


def load_split(dataset: DatasetSpec, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, H, W) and labels of one split (train, val or test), in evaluation order."""
    from fmnist.data.sources import load_tensors  # torchvision reads the files: imported when there are some

    images, labels = load_tensors(dataset, train=split != "test")
    members = split_members(dataset, split, len(labels), seed)
    return (images, labels) if members is None else (images[members], labels[members])


def make_batches(dataset: DatasetSpec, split: str, device: torch.device, *, batch_size: int, seed: int,
                 training: bool, loader: str = "tensor", num_workers: int = 0, shard: Shard = Shard()) -> Batches:
    """Batches of one split (train/val/test) through the loader named (tensor or torchvision); `batch_size`
    is per rank.

    `training` turns on shuffling and augmentation; evaluation always sees the data in file order.
    """
    augment = dataset.augment if training and dataset.augment.enabled else None
    if loader == "tensor":
        images, labels = load_split(dataset, split, seed)
        normalize = Normalize(dataset.mean, dataset.std, device)
        return TensorBatches(images.to(device), labels.to(device), batch_size, normalize,
                             shuffle=training, seed=seed, augment=augment, shard=shard)
    from fmnist.data.sources import check_labels, open_dataset

    transform = torchvision_transform(augment, dataset.image_size, dataset.mean, dataset.std)
    ds = open_dataset(dataset.name, dataset.root, dataset.download, train=split != "test", transform=transform)
    check_labels(torch.as_tensor(ds.targets), len(ds), dataset.num_classes, LAYOUTS[dataset.name].title)
    members = split_members(dataset, split, len(ds), seed)
    if members is not None:
        ds = Subset(ds, members.tolist())
    return TorchvisionBatches(ds, batch_size, shuffle=training, seed=seed, num_workers=num_workers,
                              pin_memory=device.type == "cuda", shard=shard)
