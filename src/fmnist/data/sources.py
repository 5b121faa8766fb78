"""Files -> uint8 tensors: MNIST, Fashion-MNIST and CIFAR-10 from torchvision's on-disk layout.

torchvision's classes do the parsing. What this module adds is what they lack offline: files that are
present are used as they are (a re-packed CIFAR-10 or MNIST copy has other checksums, and torchvision
would refuse it or try to download), the data directory is only read (.gz archives are unpacked into
the user cache), and a missing dataset says which files belong where. Checksums are still verified for
anything that is downloaded.

A data directory may come from anywhere, so its files are data, never code: CIFAR-10's pickled batches
are read by an unpickler that builds only dicts, lists, strings, numbers and uint8 arrays, and every file
is size-checked before it is read or inflated.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import logging
import math
import pickle
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import torch
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST, VisionDataset

from fmnist.artifacts.atomic import absent_dirs, ensure_dir, remove_empty, taking_turns, write_atomically
from fmnist.config import DatasetSpec
from fmnist.data.layout import LAYOUTS, Layout, cache_dir, data_root, missing_files, not_found
from fmnist.errors import UserError, one_line

log = logging.getLogger(__name__)


# The official files are 30 MB (a CIFAR-10 batch) and 47 MB (MNIST's training images, unpacked).
MAX_DATA_FILE_BYTES = 512 << 20
CIFAR_ROW = 3 * 32 * 32


class _CifarUnpickler(pickle.Unpickler):
    """Builds what the official CIFAR-10 pickles hold and nothing else: any other class is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}")


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR-10 batch or batches.meta as a dict with str keys, without running anything in the file."""
    size = path.stat().st_size
    if size > MAX_DATA_FILE_BYTES:
        raise UserError(f"{path} is {size >> 20} MiB: not a CIFAR-10 batch (those are 30 MiB)")
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError) as exc:
        raise UserError(f"{path} is not a CIFAR-10 batch: {one_line(exc)}") from None
    if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
        raise UserError(f"{path} is not a CIFAR-10 batch: not a dict of named fields")
    return entry


def _cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """(N, 3072) uint8 rows and N integer labels, checked against the official layout."""
    entry = read_cifar_pickle(path)
    data, labels = entry.get("data"), entry.get("labels", entry.get("fine_labels"))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == CIFAR_ROW):
        raise UserError(f"{path} is not a CIFAR-10 batch: 'data' is not an N x {CIFAR_ROW} uint8 array")
    if not (isinstance(labels, list) and len(labels) == len(data) and all(
            isinstance(x, int) and not isinstance(x, bool) and -2**31 <= x < 2**31 for x in labels)):
        raise UserError(f"{path} is not a CIFAR-10 batch: 'labels' is not {len(data)} integers")
    return data, labels


class LocalCIFAR10(CIFAR10):
    """CIFAR-10 from the pickled batches found on disk, whatever their checksums, read without pickle's
    ability to run code. Only a download (the official archive) is checked against the published md5."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}

    def __init__(self, root: str | Path, train: bool = True, transform: Any = None, target_transform: Any = None,
                 download: bool = False) -> None:
        VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        folder = Path(self.root) / self.base_folder
        parts = [_cifar_batch(folder / name) for name, _ in (self.train_list if train else self.test_list)]
        self.data = np.vstack([d for d, _ in parts]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self.targets = [label for _, labels in parts for label in labels]
        names = read_cifar_pickle(folder / self.meta["filename"]).get(self.meta["key"])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserError(f"{folder / self.meta['filename']} is not CIFAR-10's meta file: no list of label names")
        self.classes = names
        self.class_to_idx = {name: i for i, name in enumerate(names)}


@dataclass(frozen=True)
class Source:
    """A dataset's files (layout.py) and the torchvision class that reads them; md5 of the official archives."""

    layout: Layout
    cls: type[VisionDataset]
    md5: dict[str, str]

    @property
    def title(self) -> str:
        return self.layout.title


SOURCES: dict[str, Source] = {
    "mnist": Source(LAYOUTS["mnist"], MNIST, dict(MNIST.resources)),
    "fashion": Source(LAYOUTS["fashion"], FashionMNIST, dict(FashionMNIST.resources)),
    "cifar10": Source(LAYOUTS["cifar10"], LocalCIFAR10, {CIFAR10.filename: CIFAR10.tgz_md5}),
}


def open_dataset(name: str, root: str | None, download: bool, train: bool, transform: Any = None) -> VisionDataset:
    """The torchvision dataset for one split, from local files or (if allowed) a verified download."""
    source = SOURCES[name]
    where = data_root(root)
    usable_root = _local_root(source, where)
    if usable_root is None:
        usable_root = _download(source, where, download)
    try:
        return source.cls(str(usable_root), train=train, transform=transform)
    except (RuntimeError, OSError, AssertionError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        folder = usable_root / source.layout.folder
        raise UserError(f"could not read {source.title} from {folder}: {one_line(exc)}") from None


def load_tensors(dataset: DatasetSpec, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a split once into uint8 images (N, C, H, W) and int64 labels (N,)."""
    images, labels = _decode(dataset.name, str(data_root(dataset.root)), dataset.download, train)
    expected = (dataset.channels, dataset.image_size, dataset.image_size)
    if tuple(images.shape[1:]) != expected or images.dtype != torch.uint8:
        raise UserError(
            f"{SOURCES[dataset.name].title} images are {tuple(images.shape[1:])} {images.dtype}, "
            f"but the config expects {expected} uint8"
        )
    check_labels(labels, len(images), dataset.num_classes, SOURCES[dataset.name].title)
    return images, labels


def check_labels(labels: torch.Tensor, n_images: int, num_classes: int, title: str) -> None:
    """One label per image, each a class index: found when the data is opened, not after training."""
    if len(labels) != n_images:
        raise UserError(f"{title} has {len(labels)} labels for {n_images} images")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise UserError(f"{title} has labels in [{int(labels.min())}, {int(labels.max())}], "
                        f"but the config has {num_classes} classes (0..{num_classes - 1})")


@functools.lru_cache(maxsize=2)
def _decode(name: str, root: str, download: bool, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation come from the same file: decode it once per process."""
    ds = open_dataset(name, root, download, train)
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


def _local_root(source: Source, root: Path) -> Path | None:
    """A root under which torchvision finds every file unpacked, or None if the files are not here."""
    folder = root / source.layout.folder
    if all((folder / name).is_file() for name in source.layout.files):
        for name in source.layout.files:
            _check_size(folder / name)
            if source.layout.packed:
                _check_idx(folder / name, folder / name)
        return root
    if missing_files(source.layout, root):
        return None
    # The .gz archives are here. Unpack them into the cache, never into the data directory: it may be
    # read-only or shared, and root can write where it should not.
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    target_root = cache_dir() / "unpacked" / digest
    target = ensure_dir(target_root / source.layout.folder)
    for name in source.layout.files:
        _check_idx(target / name, _unpack(source, folder, target, name))
    return target_root


def _check_idx(path: Path, given: Path) -> None:
    """An IDX file of MNIST's kind: unsigned bytes in as many dimensions as its name says (idx3: images, idx1:
    labels), exactly as many as its header claims. torchvision's reader only asserts; `given` is the file the
    user has (the .gz whose unpacked copy `path` is)."""
    ndim = int(path.name.split("-idx")[1][0])
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim or header[:4] != bytes((0, 0, 0x08, ndim)):
        raise UserError(f"{given} is not an IDX file of {ndim}-D unsigned bytes (it starts {header[:4].hex()}, "
                        f"not {bytes((0, 0, 0x08, ndim)).hex()})")
    dims = struct.unpack(f">{ndim}I", header[4:])
    data = path.stat().st_size - len(header)
    if math.prod(dims) != data:
        raise UserError(f"{given}: its header claims {' x '.join(map(str, dims))} values, the file holds {data} "
                        f"(truncated, or not this dataset's file)")


def _unpack(source: Source, folder: Path, target: Path, name: str) -> Path:
    """Make target/name the unpacked content of folder/name(.gz), reusing the cache only for the same content;
    returns the file it came from.

    The cache is keyed by the archive's size and digest (a sidecar file), never its modification time:
    an older copy put back in place must not find the newer file's cache still "fresh".
    """
    dst = target / name
    plain, packed = folder / name, folder / f"{name}.gz"
    if plain.is_file():  # already unpacked in the data directory: link, do not copy
        _check_size(plain)
        if not (dst.is_symlink() and dst.resolve() == plain.resolve()):
            write_atomically(dst, lambda tmp: tmp.symlink_to(plain.resolve()))
        return plain
    _check_size(packed)
    content = packed.read_bytes()
    key = f"{len(content)} {hashlib.sha256(content).hexdigest()}\n"
    stamp = target / f".{name}.source"
    if dst.is_file() and not dst.is_symlink() and stamp.is_file() and stamp.read_text() == key:
        return packed
    digest = hashlib.md5(content).hexdigest()
    if digest != source.md5.get(packed.name):
        log.warning("%s: %s is not the official release (md5 %s); using it as it is", source.title, packed, digest)

    def gunzip(tmp: Path) -> None:
        """Inflate with a bound: a few KB of gzip can claim gigabytes."""
        written = 0
        with gzip.open(packed, "rb") as src, open(tmp, "wb") as out:
            while chunk := _read_gzip(src, packed, source):
                written += len(chunk)
                if written > MAX_DATA_FILE_BYTES:
                    raise UserError(f"{source.title}: {packed} inflates to more than {MAX_DATA_FILE_BYTES >> 20} "
                                    f"MiB, far more than the dataset holds; refusing it")
                out.write(chunk)

    # Parallel sweep jobs may unpack at once: each file appears whole, through write_atomically.
    write_atomically(dst, gunzip)
    write_atomically(stamp, lambda tmp: tmp.write_text(key))
    return packed


def _read_gzip(src: gzip.GzipFile, packed: Path, source: Source) -> bytes:
    try:
        return src.read(1 << 20)
    except (EOFError, OSError, zlib.error) as exc:
        raise UserError(f"{source.title}: could not unpack {packed}: {one_line(exc)}") from None


def _check_size(path: Path) -> None:
    size = path.stat().st_size
    if size > MAX_DATA_FILE_BYTES:
        raise UserError(f"{path} is {size >> 20} MiB: larger than any file of this dataset, refusing to read it")


def download(name: str, root: Path, announce: Callable[[str], None] = log.info) -> None:
    """Fetch a dataset's files into root through torchvision (which verifies checksums), or say why not.
    `announce` tells whoever waits that a download starts (before a run's logging exists: print it)."""
    _download(SOURCES[name], root, allowed=True, announce=announce)


DOWNLOAD_LOCK = ".fmnist-download.lock"  # in the data root: the processes fetching into it take turns
# torchvision opens its URLs without a timeout: a server that stops sending would hold the download, and every
# process waiting for its turn, forever. A download that receives nothing for this long fails instead.
STALL_SECONDS = 60.0


def _download(source: Source, root: Path, allowed: bool, announce: Callable[[str], None] = log.info) -> Path:
    """Download through torchvision (which verifies checksums) or explain where the files should be."""
    if not allowed:
        raise UserError(not_found(source.layout, root, "dataset.download=false"))
    lock, made = root / DOWNLOAD_LOCK, absent_dirs(root / source.layout.folder)
    lock_made = not lock.exists()
    # torchvision writes each file in place as it arrives, so processes that find the data missing at once
    # (parallel sweep jobs, the ranks of a run, two commands) would truncate each other's files and fail
    # their checksums: one fetches, the others wait for it here and then find the files.
    with contextlib.ExitStack() as turn:
        try:
            turn.enter_context(taking_turns(lock))
        except UserError as exc:  # the lock file cannot be written: nor could the data be
            _tidy(made)
            raise _download_failed(source, root, exc) from None
        if missing_files(source.layout, root):  # else fetched by the process this one waited for
            archive = root / source.layout.archive if source.layout.archive else None
            try:
                if archive is not None and archive.is_file():
                    _check_archive(source, archive)
                    announce(f"{source.title}: unpacking {archive} (official: its md5 checked)")
                else:
                    announce(f"{source.title} not found under {root}: downloading it (checksums verified)")
                # Constructing the dataset with download=True fetches, verifies and unpacks every split (an
                # official archive already in the root is verified and unpacked, offline).
                with _sockets_time_out(STALL_SECONDS):
                    source.cls(str(root), train=True, download=True)
            except UserError:
                _tidy(made, lock if lock_made else None)
                raise
            except (RuntimeError, URLError, OSError) as exc:
                _tidy(made, lock if lock_made else None)
                raise _download_failed(source, root, exc) from None
    return root


def _tidy(made: list[Path], lock: Path | None = None) -> None:
    """After a failed download, remove the lock file and the folders it made where they are empty (the error
    names the folder to put the files in): a mistyped dataset.root leaves no tree behind. Any files are kept.
    The lock goes while it is held, so whoever waits on it takes its turn on a new one (taking_turns)."""
    if lock is not None:
        with contextlib.suppress(OSError):
            lock.unlink()
    remove_empty(made)


def _download_failed(source: Source, root: Path, exc: BaseException) -> UserError:
    return UserError(not_found(source.layout, root, f"the download failed ({one_line(exc)})"))


def _check_archive(source: Source, archive: Path) -> None:
    """An archive of the dataset in the root that is not the official one (a re-packed copy): torchvision would
    download the official one over it."""
    size = archive.stat().st_size
    with open(archive, "rb") as f:
        official = size <= MAX_DATA_FILE_BYTES and hashlib.file_digest(f, "md5").hexdigest() == source.md5.get(
            archive.name)
    if not official:
        raise UserError(not_found(source.layout, archive.parent, f"{archive} is not the official archive (its md5 "
                                                                 f"differs), which a download would write over"))


@contextlib.contextmanager
def _sockets_time_out(seconds: float) -> Iterator[None]:
    """Every socket opened meanwhile without a timeout of its own (urllib's urlopen as torchvision calls it)
    gives up after `seconds` without progress in one operation: a slow download goes on, a stalled one fails."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
