"""Reading MNIST, Fashion-MNIST and CIFAR-10 from torchvision's on-disk layout.

torchvision's classes do the parsing. What this module adds is what they lack offline: files that are
present are used as they are (a re-packed CIFAR-10 or MNIST copy has other checksums, and torchvision
would refuse it or try to download), the data directory is only read (.gz archives are unpacked into
the user cache), and a missing dataset says which files belong where. Checksums are still verified for
anything that is downloaded.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from omegaconf import DictConfig
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST, VisionDataset

from fmnist.atomic import write_atomically
from fmnist.errors import UserError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """fmnist's cache: unpacked archives, and the default data root."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "fmnist"


class LocalCIFAR10(CIFAR10):
    """CIFAR-10 from the pickled batches found on disk, whatever their checksums.

    Only a download (the official archive) is checked against the published md5.
    """

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


@dataclass(frozen=True)
class Source:
    """Where a dataset's files live under the data root and where a user can get them."""

    title: str
    cls: type[VisionDataset]
    folder: str
    files: tuple[str, ...]
    url: str
    md5: dict[str, str]


def _idx_source(title: str, cls: type[MNIST]) -> Source:
    return Source(
        title=title,
        cls=cls,
        folder=f"{cls.__name__}/raw",
        files=tuple(name.removesuffix(".gz") for name, _ in cls.resources),
        url=cls.mirrors[0],
        md5=dict(cls.resources),
    )


SOURCES: dict[str, Source] = {
    "mnist": _idx_source("MNIST", MNIST),
    "fashion": _idx_source("Fashion-MNIST", FashionMNIST),
    "cifar10": Source(
        title="CIFAR-10",
        cls=LocalCIFAR10,
        folder=CIFAR10.base_folder,
        files=tuple(name for name, _ in CIFAR10.train_list + CIFAR10.test_list) + (CIFAR10.meta["filename"],),
        url=CIFAR10.url,
        md5={},
    ),
}


def data_root(dataset: DictConfig) -> Path:
    """dataset.root, else $FMNIST_DATA (through the config), else the user cache directory."""
    return Path(dataset.root).expanduser() if dataset.root else cache_dir() / "data"


def open_dataset(dataset: DictConfig, train: bool, transform: Any = None) -> VisionDataset:
    """The torchvision dataset for one split, from local files or (if allowed) a verified download."""
    source = SOURCES[dataset.name]
    root = data_root(dataset)
    usable_root = _local_root(source, root)
    if usable_root is None:
        usable_root = _download(source, root, dataset.download)
    try:
        return source.cls(str(usable_root), train=train, transform=transform)
    except (RuntimeError, OSError, AssertionError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        where = usable_root / source.folder
        raise UserError(f"could not read {source.title} from {where}: {_one_line(exc)}") from None


def load_tensors(dataset: DictConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a split once into uint8 images (N, C, H, W) and int64 labels (N,)."""
    images, labels = _decode(dataset.name, str(data_root(dataset)), bool(dataset.download), train)
    expected = (dataset.channels, dataset.image_size, dataset.image_size)
    if tuple(images.shape[1:]) != expected or images.dtype != torch.uint8:
        raise UserError(
            f"{SOURCES[dataset.name].title} images are {tuple(images.shape[1:])} {images.dtype}, "
            f"but the config expects {expected} uint8"
        )
    if len(labels) != len(images) or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <
                                      dataset.num_classes):
        raise UserError(f"{SOURCES[dataset.name].title} labels do not match its {len(images)} images "
                        f"and {dataset.num_classes} classes")
    return images, labels


@functools.lru_cache(maxsize=2)
def _decode(name: str, root: str, download: bool, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation come from the same file: decode it once per process."""
    ds = open_dataset(DictConfig({"name": name, "root": root, "download": download}), train)
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


def _local_root(source: Source, root: Path) -> Path | None:
    """A root under which torchvision finds every file unpacked, or None if the files are not here."""
    folder = root / source.folder
    if all((folder / name).is_file() for name in source.files):
        return root
    if source.cls is LocalCIFAR10 or not all(
        (folder / name).is_file() or (folder / f"{name}.gz").is_file() for name in source.files
    ):
        return None
    # The .gz archives are here. Unpack them into the cache, never into the data directory: it may be
    # read-only or shared, and root can write where it should not.
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    target_root = cache_dir() / "unpacked" / digest
    target = target_root / source.folder
    target.mkdir(parents=True, exist_ok=True)
    for name in source.files:
        _unpack(source, folder, target, name)
    return target_root


def _unpack(source: Source, folder: Path, target: Path, name: str) -> None:
    dst = target / name
    plain, packed = folder / name, folder / f"{name}.gz"
    if dst.is_file() and (not packed.is_file() or dst.stat().st_mtime >= packed.stat().st_mtime):
        return
    # Parallel sweep jobs may unpack at once: each file appears whole, through write_atomically.
    if plain.is_file():  # already unpacked in the data directory: link, do not copy
        write_atomically(dst, lambda tmp: tmp.symlink_to(plain.resolve()))
        return
    digest = hashlib.md5(packed.read_bytes()).hexdigest()
    if digest != source.md5.get(packed.name):
        log.warning("%s: %s is not the official release (md5 %s); using it as it is", source.title, packed, digest)

    def gunzip(tmp: Path) -> None:
        with gzip.open(packed, "rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)

    try:
        write_atomically(dst, gunzip)
    except (OSError, EOFError) as exc:
        raise UserError(f"{source.title}: could not unpack {packed}: {_one_line(exc)}") from None


def _download(source: Source, root: Path, allowed: bool) -> Path:
    """Download through torchvision (which verifies checksums) or explain where the files should be."""
    if not allowed:
        raise UserError(_missing(source, root, "dataset.download=false"))
    log.info("%s not found under %s: downloading", source.title, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        # Constructing the dataset with download=True fetches, verifies and unpacks every split.
        source.cls(str(root), train=True, download=True)
    except (RuntimeError, URLError, OSError) as exc:
        raise UserError(_missing(source, root, f"the download failed ({_one_line(exc)})")) from None
    return root


def _missing(source: Source, root: Path, why: str) -> str:
    folder = root / source.folder
    have = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    missing = [n for n in source.files if n not in have and f"{n}.gz" not in have]
    packed = "" if source.cls is LocalCIFAR10 else " (.gz or unpacked)"
    return (
        f"{source.title} not found: {folder} needs {', '.join(missing)}{packed}; {why}. "
        f"Get them from {source.url} into that folder, or set dataset.root (or FMNIST_DATA) "
        f"to a directory that has {source.folder}/"
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines()[:3] if line.strip())
