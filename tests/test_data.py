"""Loading the datasets from their real file formats, splits, loaders and augmentation."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import N_TEST, N_TRAIN, make_images, settings

from fmnist.config import TrainConfig
from fmnist.data.batches import Batches, load_split, make_batches, split_indices
from fmnist.data.sources import load_tensors
from fmnist.data.transforms import augment_batch, torchvision_transform
from fmnist.errors import UserError

CPU = torch.device("cpu")


def batches(cfg: TrainConfig, split: str, batch_size: int, training: bool) -> Batches:
    return make_batches(cfg.dataset, split, CPU, batch_size=batch_size, seed=cfg.seed, training=training,
                        loader=cfg.loader, num_workers=cfg.num_workers)


@pytest.mark.parametrize(("name", "n_train", "shape"), [
    ("mnist", N_TRAIN["idx"], (1, 28, 28)),
    ("fashion", N_TRAIN["idx"], (1, 28, 28)),
    ("cifar10", N_TRAIN["cifar"], (3, 32, 32)),
])
def test_each_dataset_loads_from_its_files(name: str, n_train: int, shape: tuple[int, ...]):
    cfg = settings(f"dataset={name}")
    images, labels = load_tensors(cfg.dataset, train=True)
    assert images.shape == (n_train, *shape) and images.dtype == torch.uint8
    test_images, test_labels = load_tensors(cfg.dataset, train=False)
    assert len(test_images) == len(test_labels) == N_TEST
    # The pixels are exactly those the fixture wrote (same generator, same seed).
    seed = {"mnist": 1, "fashion": 2, "cifar10": 3}[name]
    expected, expected_labels = make_images(n_train, shape[1], shape[0], seed)
    assert torch.equal(images, torch.from_numpy(expected))
    assert torch.equal(labels, torch.from_numpy(expected_labels).long())


def test_data_directory_is_never_written(data_root: Path):
    before = sorted(p.name for p in (data_root / "MNIST" / "raw").iterdir())
    load_tensors(settings("dataset=mnist").dataset, train=True)
    assert sorted(p.name for p in (data_root / "MNIST" / "raw").iterdir()) == before


def test_missing_dataset_names_the_files_and_where(tmp_path: Path):
    cfg = settings("dataset=fashion", f"dataset.root={tmp_path}", "dataset.download=false")
    with pytest.raises(UserError) as info:
        load_tensors(cfg.dataset, train=True)
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert name in message
    assert "\n" not in message


def test_the_layout_known_without_torch_is_torchvisions():
    """layout.py answers "where are the files" before torch loads; torchvision's classes read them."""
    from torchvision.datasets import CIFAR10, MNIST, FashionMNIST

    from fmnist.data.layout import LAYOUTS

    for name, cls in (("mnist", MNIST), ("fashion", FashionMNIST)):
        layout = LAYOUTS[name]
        assert layout.files == tuple(f.removesuffix(".gz") for f, _ in cls.resources)
        assert (layout.folder, layout.url, layout.packed) == (f"{cls.__name__}/raw", cls.mirrors[0], True)
    layout = LAYOUTS["cifar10"]
    assert layout.files == (*(f for f, _ in CIFAR10.train_list + CIFAR10.test_list), CIFAR10.meta["filename"])
    assert (layout.folder, layout.url, layout.packed) == (CIFAR10.base_folder, CIFAR10.url, False)


def test_missing_cifar_after_failed_download_explains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from fmnist.data import sources

    def offline(*args, **kwargs):
        raise RuntimeError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(sources.LocalCIFAR10, "download", offline)
    cfg = settings("dataset=cifar10", f"dataset.root={tmp_path}")
    expected = r"CIFAR-10 not found: .*cifar-10-batches-py needs data_batch_1.*download failed"
    with pytest.raises(UserError, match=expected):
        load_tensors(cfg.dataset, train=True)


def test_a_cifar_archive_in_the_root_is_unpacked_if_official_and_never_written_over(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch):
    """What the error tells a user without the data to do: put cifar-10-python.tar.gz in the root. The official
    archive is unpacked offline; any other (a re-packed copy) is refused, where torchvision would download the
    official one over it."""
    import hashlib
    import tarfile
    import urllib.request

    from helpers import write_cifar

    from fmnist.data import sources

    def offline(*args, **kwargs):
        raise AssertionError("nothing is to be fetched")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    write_cifar(tmp_path / "made", seed=5)
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "made" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    content = archive.read_bytes()
    lines: list[str] = []
    with pytest.raises(UserError) as info:
        sources.download("cifar10", root, announce=lines.append)
    assert f"{archive} is not the official archive (its md5 differs), which a download would write over. Get " \
           f"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and unpack it in {root} (tar -xzf " \
           f"cifar-10-python.tar.gz -C {root})" in str(info.value)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"] and archive.read_bytes() == content
    official = hashlib.md5(content).hexdigest()  # as if it were the official one
    monkeypatch.setattr(sources.LocalCIFAR10, "tgz_md5", official)
    monkeypatch.setitem(sources.SOURCES["cifar10"].md5, "cifar-10-python.tar.gz", official)
    sources.download("cifar10", root, announce=lines.append)
    assert lines == [f"CIFAR-10: unpacking {archive} (official: its md5 checked)"]
    images, labels = load_tensors(settings("dataset=cifar10", f"dataset.root={root}").dataset, train=True)
    expected, expected_labels = make_images(N_TRAIN["cifar"], 32, 3, seed=5)
    assert torch.equal(images, torch.from_numpy(expected)) and torch.equal(labels, torch.from_numpy(expected_labels))


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_download_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool):
    """A mistyped dataset.root, offline: the error names the folder; the folders torchvision made for the download
    and the lock file go again, so a typo leaves no tree behind (and an existing root only what it had)."""
    import dataclasses

    from fmnist.data import sources

    class Offline:  # as torchvision does: the folder first, then the fetch, which fails
        def __init__(self, root: str, train: bool, download: bool) -> None:
            (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
            raise RuntimeError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setitem(sources.SOURCES, "mnist", dataclasses.replace(sources.SOURCES["mnist"], cls=Offline))
    root = tmp_path / "typo" / "data"
    if existing:
        root.mkdir(parents=True)
        (root / "mine.txt").write_text("kept")
    with pytest.raises(UserError, match=r"MNIST not found: .*typo/data/MNIST/raw needs .*download failed"):
        sources.download("mnist", root, announce=lambda line: None)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == (["typo", "typo/data", "typo/data/mine.txt"] if existing else [])


FETCH_ALONGSIDE = """
import dataclasses, sys, time
from pathlib import Path
from fmnist.data import sources

root, me = Path(sys.argv[1]), sys.argv[2]

class Fetch:  # torchvision's download as far as the files go: slow, and it writes them in place
    def __init__(self, root, train, download):
        with open(Path(root) / "fetches", "a") as log:
            log.write(me + "\\n")
        deadline = time.monotonic() + 120
        while len(list(Path(root).glob("ready-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2)  # the other process has asked for the data by now
        folder = Path(root) / "MNIST" / "raw"
        folder.mkdir(parents=True, exist_ok=True)
        for name in sources.LAYOUTS["mnist"].files:
            (folder / name).write_bytes(b"")

sources.SOURCES["mnist"] = dataclasses.replace(sources.SOURCES["mnist"], cls=Fetch)
(root / f"ready-{me}").touch()
sources.download("mnist", root, announce=print)
"""


def test_processes_that_find_the_data_missing_at_once_fetch_it_once(tmp_path: Path):
    """Parallel sweep jobs and the ranks of a run start together: two fetching into one folder would truncate
    each other's files. One fetches; the other waits for it and finds the files."""
    (tmp_path / "fetch.py").write_text(FETCH_ALONGSIDE)
    root = tmp_path / "data"
    root.mkdir()
    procs = [subprocess.Popen([sys.executable, "fetch.py", str(root), str(k)], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for k in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert len((root / "fetches").read_text().split()) == 1, outputs
    assert "".join(outputs).count("MNIST not found under") == 1, outputs


def test_a_download_that_stalls_fails_instead_of_holding_the_others(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    """torchvision opens its URLs without a timeout: a server that accepts and never answers held the fetch,
    and every process waiting for its turn, forever."""
    import dataclasses
    import socket
    import threading
    import urllib.request

    from fmnist.data import sources

    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody ever answers
    port = silent.getsockname()[1]

    class Fetch:  # torchvision's download as far as the network goes: urlopen without a timeout
        def __init__(self, root: str, train: bool, download: bool) -> None:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/train-images-idx3-ubyte.gz").read()

    monkeypatch.setitem(sources.SOURCES, "mnist", dataclasses.replace(sources.SOURCES["mnist"], cls=Fetch))
    monkeypatch.setattr(sources, "STALL_SECONDS", 0.5)
    outcome: list[BaseException] = []

    def fetch() -> None:
        try:
            sources.download("mnist", tmp_path, announce=lambda line: None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    fetcher = threading.Thread(target=fetch, daemon=True)
    fetcher.start()
    fetcher.join(30)
    silent.close()
    assert not fetcher.is_alive(), "the download still waits for a server that never answers"
    assert len(outcome) == 1 and isinstance(outcome[0], UserError), outcome
    assert "download failed (timed out)" in str(outcome[0])
    assert socket.getdefaulttimeout() is None  # the process's other sockets keep their default


def test_a_download_names_what_failed_the_lock_or_the_files_it_fetched(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    """A lock file that cannot be made fails the download in its usual line; a fetched file that does not read
    (a verified download that is still not what the reader expects) keeps its own line, not "download failed"."""
    import dataclasses

    from fmnist.data import sources

    class Malformed:  # the download went through; reading what it fetched did not
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raise UserError("batches.meta is not CIFAR-10's meta file: no list of label names")

    monkeypatch.setitem(sources.SOURCES, "mnist", dataclasses.replace(sources.SOURCES["mnist"], cls=Malformed))
    with pytest.raises(UserError, match="^batches.meta is not CIFAR-10's meta file"):
        sources.download("mnist", tmp_path / "data", announce=lambda line: None)
    (tmp_path / "taken" / sources.DOWNLOAD_LOCK).mkdir(parents=True)
    with pytest.raises(UserError, match=r"MNIST not found.*download failed \(could not write .*: Is a directory\)"):
        sources.download("mnist", tmp_path / "taken", announce=lambda line: None)


def test_corrupt_archive_is_a_clear_error(tmp_path: Path, data_root: Path):
    shutil.copytree(data_root / "MNIST", tmp_path / "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(UserError, match="could not unpack"):
        load_tensors(settings("dataset=mnist", f"dataset.root={tmp_path}").dataset, train=True)


def test_a_truncated_or_foreign_idx_file_is_named_by_what_is_wrong(tmp_path: Path, data_root: Path):
    shutil.copytree(data_root / "MNIST", tmp_path / "MNIST")
    raw = tmp_path / "MNIST" / "raw"
    dataset = settings("dataset=mnist", f"dataset.root={tmp_path}").dataset
    archive = raw / "t10k-images-idx3-ubyte.gz"
    payload = gzip.decompress(archive.read_bytes())
    archive.write_bytes(gzip.compress(payload[:1000]))
    with pytest.raises(UserError, match=rf"{archive}: its header claims 100 x 28 x 28 values, the file holds 984 "):
        load_tensors(dataset, train=False)
    archive.write_bytes(gzip.compress(payload))
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + gzip.decompress(labels.read_bytes())[4:]))  # floats
    with pytest.raises(UserError, match=rf"{labels} is not an IDX file of 1-D unsigned bytes \(it starts 00000d01"):
        load_tensors(dataset, train=False)
    for packed in raw.glob("*.gz"):  # unpacked files in the data directory are checked alike
        packed.with_suffix("").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    with pytest.raises(UserError, match=rf"{labels.with_suffix('')} is not an IDX file"):
        load_tensors(dataset, train=False)


def test_split_is_seeded_disjoint_and_complete():
    a_train, a_val = split_indices(100, 0.1, seed=7)
    b_train, b_val = split_indices(100, 0.1, seed=7)
    assert torch.equal(a_train, b_train) and torch.equal(a_val, b_val)
    assert len(a_val) == 10 and len(set(a_train.tolist()) | set(a_val.tolist())) == 100
    assert not torch.equal(split_indices(100, 0.1, seed=8)[1], a_val)


def test_tensor_and_torchvision_loaders_give_the_same_batches():
    tensor_cfg = settings("dataset=fashion")
    tv_cfg = settings("dataset=fashion", "data.loader=torchvision", "num_workers=0")
    for split in ("val", "test"):
        a = list(batches(tensor_cfg, split, 32, False))
        b = list(batches(tv_cfg, split, 32, False))
        assert len(a) == len(b)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(ya, yb)
            assert torch.allclose(xa, xb, atol=1e-5)


def test_training_order_depends_on_seed_and_epoch_only():
    cfg = settings("dataset=mnist")
    first = batches(cfg, "train", 50, True)
    second = batches(cfg, "train", 50, True)
    first.set_epoch(3)
    second.set_epoch(3)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))
    second.set_epoch(4)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))
    labels = torch.cat([y for _, y in first])
    assert sorted(labels.tolist()) == sorted(load_split(cfg.dataset, "train", cfg.seed)[1].tolist())


def test_augmentation_is_batched_seeded_and_keeps_shape():
    cfg = settings("dataset=cifar10", "dataset.augment.crop_padding=4", "dataset.augment.hflip=true",
                  "dataset.augment.rotation=10")
    x = torch.rand(8, 3, 32, 32) * 255
    a = augment_batch(x, cfg.dataset.augment, torch.Generator().manual_seed(0))
    b = augment_batch(x, cfg.dataset.augment, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_cutout_blanks_one_square_of_the_asked_size_in_about_half_the_images():
    cfg = settings("dataset.augment.erase=0.25")  # 7 of 28 pixels a side
    x = torch.full((400, 1, 28, 28), 255.0)
    out = augment_batch(x, cfg.dataset.augment, torch.Generator().manual_seed(0))
    blanked = (out == 0).flatten(1).sum(1)
    assert set(blanked.tolist()) == {0, 49} and 150 < int((blanked > 0).sum()) < 250
    for image in out[blanked > 0][:20, 0]:
        rows, cols = (image == 0).nonzero().unbind(1)
        assert rows.max() - rows.min() == 6 and cols.max() - cols.min() == 6  # one square, not scattered pixels
    path = torchvision_transform(cfg.dataset.augment, 28, (0.0,), (1.0,))  # the DataLoader path: the same square
    from PIL import Image
    erased = [(path(Image.new("L", (28, 28), 255)) == 0).sum().item() for _ in range(60)]
    assert set(erased) == {0, 49}


def test_crop_with_padding_shifts_the_image():
    cfg = settings("dataset.augment.crop_padding=2")
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10, 10] = 1.0
    out = augment_batch(x, cfg.dataset.augment, torch.Generator().manual_seed(0))
    positions = {tuple(p.tolist()) for p in (out[:, 0] == 1).nonzero()[:, 1:]}
    assert len(positions) > 5 and all(8 <= r <= 12 and 8 <= c <= 12 for r, c in positions)
    assert out.sum() == 64  # a shift within the padding never loses the pixel


def test_flips_asked_for_on_digits_are_said_and_only_there():
    from fmnist.data.transforms import mirroring_note

    mnist, fashion = settings("dataset=mnist").dataset, settings("dataset=fashion").dataset
    assert mirroring_note(mnist, "flip_translate").startswith("tta=flip_translate mirrors the images")
    assert mirroring_note(mnist, "translate", hflip=True).startswith("dataset.augment.hflip=true mirrors the images")
    assert mirroring_note(mnist, "flip", hflip=True).startswith("dataset.augment.hflip=true and tta=flip mirror ")
    assert mirroring_note(mnist, "translate") is None and mirroring_note(fashion, "flip", hflip=True) is None


def test_flips_at_test_time_that_the_training_never_showed_are_said():
    from fmnist.data.transforms import unflipped_note

    plain = settings("dataset=fashion").dataset.augment
    assert unflipped_note(plain, "flip_translate") == (
        "tta=flip_translate averages in mirror images, which a model trained with dataset.augment.hflip=false never "
        "saw: expect a lower accuracy than without it")
    assert unflipped_note(plain, "translate") is None and unflipped_note(plain, "none") is None
    flips = settings("dataset=fashion", "dataset.augment.hflip=true").dataset.augment
    assert unflipped_note(flips, "flip") is None and unflipped_note(flips, "flip_translate") is None
