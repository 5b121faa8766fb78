"""Where each dataset's files lie under a data root (torchvision's layout), known without importing torch.

So a run whose data is missing hears it before torch loads and before Hydra makes its run directory: one line,
nothing left behind. sources.py reads the files through torchvision's classes, whose names, folders and URLs
these are (tests/test_data.py holds the two to the same lists).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from fmnist.config import DatasetSpec
from fmnist.errors import UserError
from fmnist.paths import user_path


@dataclass(frozen=True)
class Layout:
    """A dataset's files: `folder` under the data root holds `files`; with `packed`, each may be its `.gz`.
    Their images are `channels` x `size` x `size`, labelled 0..classes-1."""

    title: str
    folder: str
    files: tuple[str, ...]
    url: str
    packed: bool
    channels: int
    size: int
    classes: int

    @property
    def archive(self) -> str | None:
        """The file `url` names where it is one archive of every file (CIFAR-10's), unpacked into the root."""
        return self.url.rsplit("/", 1)[1] if self.url.endswith(".tar.gz") else None


def _idx(title: str, folder: str, url: str) -> Layout:
    files = tuple(f"{split}-{kind}-idx{dims}-ubyte" for split in ("train", "t10k")
                  for kind, dims in (("images", 3), ("labels", 1)))
    return Layout(title, f"{folder}/raw", files, url, packed=True, channels=1, size=28, classes=10)


LAYOUTS: dict[str, Layout] = {
    "mnist": _idx("MNIST", "MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion": _idx("Fashion-MNIST", "FashionMNIST",
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    "cifar10": Layout("CIFAR-10", "cifar-10-batches-py",
                      (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", packed=False, channels=3, size=32,
                      classes=10),
}


def cache_dir() -> Path:
    """fmnist's cache: unpacked archives, and the default data root."""
    return user_path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "fmnist"


def data_root(root: str | None) -> Path:
    """dataset.root, else $FMNIST_DATA (through the config), else the user cache directory."""
    return user_path(root) if root else cache_dir() / "data"


def _holds(layout: Layout, folder: Path, name: str) -> bool:
    """Whether `folder` has the file `name` (for a packed layout, unpacked or as .gz)."""
    return (folder / name).is_file() or (layout.packed and (folder / f"{name}.gz").is_file())


def missing_files(layout: Layout, root: Path) -> list[str]:
    """The files of `layout` not under `root`."""
    return [name for name in layout.files if not _holds(layout, root / layout.folder, name)]


def misplaced(layout: Layout, root: Path) -> str | None:
    """Where the files are, when they are beside the folder they belong in: dataset.root naming that folder
    itself (~/data/MNIST/raw), or the files straight in the root or in MNIST/ without raw/."""
    parts = Path(layout.folder).parts
    places = [p for p in dict.fromkeys((root, root / parts[0])) if p != root / layout.folder]
    place = next((p for p in places if any(_holds(layout, p, name) for name in layout.files)), None)
    if place is None:
        return None
    if place == root and root.parts[-len(parts):] == parts:
        return (f"dataset.root names the files' own folder: set dataset.root={root.parents[len(parts) - 1]}, "
                f"which holds {layout.folder}/")
    return f"they are in {place}: move them into {root / layout.folder}"


def not_found(layout: Layout, root: Path, why: str) -> str:
    """What is missing where, and why it was not fetched and where to get it, or where the files are instead."""
    packed = " (.gz or unpacked)" if layout.packed else ""
    missing = f"{layout.title} not found: {root / layout.folder} needs {', '.join(missing_files(layout, root))}{packed}"
    if hint := misplaced(layout, root):
        return f"{missing}; {hint}"
    get = (f"Get {layout.url} and unpack it in {root} (tar -xzf {layout.archive} -C {root})" if layout.archive
           else f"Get them from {layout.url} into that folder")
    return f"{missing}; {why}. {get}, or set dataset.root (or FMNIST_DATA) to a directory that has {layout.folder}/"


def check_described(dataset: DatasetSpec) -> None:
    """The config's description of a dataset's images and classes is the files': a dataset.image_size or
    dataset.channels of another (fmnist does not resize), or fewer classes than the labels, would otherwise
    be refused only once the data is read, with the run begun."""
    layout = LAYOUTS[dataset.name]
    for key, given, actual in (("image_size", dataset.image_size, layout.size),
                               ("channels", dataset.channels, layout.channels)):
        if given != actual:
            raise UserError(f"dataset.{key}={given} does not describe {layout.title}, whose images are "
                            f"{layout.channels}x{layout.size}x{layout.size} (they are used as they are, not "
                            f"resized): leave dataset.{key} at {actual}")
    if dataset.num_classes < layout.classes:
        raise UserError(f"dataset.classes names {dataset.num_classes} classes, but {layout.title} has "
                        f"{layout.classes} (labels 0..{layout.classes - 1}): name each of them")


def find_data(dataset: DatasetSpec) -> None:
    """Before a run starts: its files are there, or fetched now (dataset.download), or the run is refused in one
    line. Only a fetch imports torch (torchvision downloads and verifies)."""
    layout, root = LAYOUTS[dataset.name], data_root(dataset.root)
    if not missing_files(layout, root):
        return
    if not dataset.download or misplaced(layout, root):  # no download of what is here already
        raise UserError(not_found(layout, root, "dataset.download=false"))
    from fmnist.data.sources import download

    # Logging starts with the run: the line that a download starts is for whoever waits on it.
    download(dataset.name, root, announce=lambda line: print(line, file=sys.stderr))
