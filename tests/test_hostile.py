"""Files from elsewhere are data, never code: crafted checkpoints, datasets and images, tried as an attacker would.

Every payload below would create a marker directory if anything in the file were imported, called or
unpickled beyond the allowlist; each must end in exit code 2, one line on stderr, and no marker.
"""

from __future__ import annotations

import copy
import gzip
import os
import pickle
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from helpers import CIFAR_CLASSES, cli, make_images, one_line_error, write_idx, write_mnist_like

from fmnist.artifacts.checkpoint import load_checkpoint
from fmnist.config import DatasetSpec, InspectConfig
from fmnist.data import sources
from fmnist.errors import UserError
from fmnist.inference.restore import restore


def one_line_refusal(proc, *needles: str) -> str:
    line = one_line_error(proc)
    for needle in needles:
        assert needle in line, line
    return line


class MakesDirectory:
    """Unpickling this calls os.makedirs(marker): what a malicious pickle would do with a shell instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def payload(marker: Path) -> dict:
    return {"_target_": "os.makedirs", "name": str(marker)}


def crafted(trained_run: Path, tmp_path: Path, change) -> Path:
    """A copy of a real best.pt with `change(ckpt)` applied, saved as plain tensors and dicts."""
    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    change(ckpt)
    path = tmp_path / "crafted.pt"
    torch.save(ckpt, path)
    return path


def _set(path: str, value):
    def change(ckpt: dict) -> None:
        node = ckpt
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        node[last] = value(ckpt) if callable(value) else value
    return change


# (id, how the checkpoint is changed given the marker, what the one-line refusal names)
CONFIG_ATTACKS = [
    ("model-target", lambda m: _set("config.model", payload(m)), "model._target_=os.makedirs"),
    ("loss-target", lambda m: _set("config.loss", payload(m)), "loss._target_=os.makedirs"),
    ("optimizer-target", lambda m: _set("config.optimizer", {**payload(m), "_partial_": True}),
     "optimizer._target_"),
    ("scheduler-target", lambda m: _set("config.scheduler", {**payload(m), "interval": "epoch"}),
     "scheduler._target_"),
    ("nested-target", lambda m: _set("config.model.hidden", payload(m)), "refusing model.hidden._target_"),
    ("top-level-target", lambda m: _set("config.evil", payload(m)), "refusing evil._target_"),
    ("deep-target", lambda m: _set("config.dataset.augment", {"x": [payload(m)]}), "_target_"),
    ("hydra-keys", lambda m: _set("config.model._args_", [str(m)]), "_args_"),
    ("resolver", lambda m: _set("config.dataset.name", "${oc.env:HOME}"), "interpolation"),
    ("extra-kwarg", lambda m: _set("config.loss.reduction", "none"), "loss.reduction"),
]


def refused_in_process(ckpt: Path, needle: str) -> None:
    """What fmnist-eval and fmnist-predict do first: restore the checkpoint (the CLI tests below show the
    same refusal end to end; in-process keeps this table fast)."""
    with pytest.raises(UserError) as info:
        restore(InspectConfig(ckpt=str(ckpt), device="cpu", precision=None, out_dir=None, trust=frozenset(),
                              data_root=None, data_download=None))
    assert "\n" not in str(info.value) and needle in str(info.value), str(info.value)


@pytest.mark.parametrize("attack", CONFIG_ATTACKS, ids=[a[0] for a in CONFIG_ATTACKS])
def test_a_checkpoint_config_cannot_build_anything_outside_the_allowlist(trained_run: Path, tmp_path: Path,
                                                                          attack):
    _, change, needle = attack
    marker = tmp_path / "pwned"
    refused_in_process(crafted(trained_run, tmp_path, change(marker)), needle)
    assert not marker.exists()


def test_a_stray_key_where_fmnist_reads_key_by_key_is_left_out(trained_run: Path, tmp_path: Path):
    """A key that dataset or its augment do not have (a crafted file, or a run given
    +dataset.limit=5 before such keys were refused) is ignored as its training ignored it: never passed on
    to a constructor as an unexpected argument."""
    def change(ckpt: dict) -> None:
        ckpt["config"]["dataset"]["augment"]["bogus"] = 1
        ckpt["config"]["dataset"]["limit"] = 5
    restored = restore(InspectConfig(ckpt=str(crafted(trained_run, tmp_path, change)), device="cpu",
                                     precision=None, out_dir=None, trust=frozenset(), data_root=None,
                                     data_download=None))
    resolved = restored.cfg.resolved
    assert "bogus" not in resolved["dataset"]["augment"] and "limit" not in resolved["dataset"]


def test_the_cli_refuses_a_crafted_config_in_one_line(trained_run: Path, tmp_path: Path):
    marker = tmp_path / "pwned"
    ckpt = crafted(trained_run, tmp_path, _set("config.model.hidden", payload(marker)))
    proc = cli("fmnist-eval", f"ckpt={ckpt}", "progress=false", cwd=tmp_path, check=False)
    one_line_refusal(proc, "refusing model.hidden._target_")
    assert not marker.exists()


def test_resume_and_predict_refuse_a_foreign_target_too(trained_run: Path, tmp_path: Path):
    marker = tmp_path / "pwned"
    ckpt = crafted(trained_run, tmp_path, _set("config.model", payload(marker)))
    run = tmp_path / "victim"
    run.mkdir()
    shutil.copy(ckpt, run / "last.pt")
    for tool, args in (("fmnist-train", (f"hydra.run.dir={run}", "resume=auto", "progress=false")),
                       ("fmnist-train", (f"resume={ckpt}", "progress=false")),
                       ("fmnist-predict", (f"ckpt={ckpt}",))):
        proc = cli(tool, *args, cwd=tmp_path, check=False)
        one_line_refusal(proc, "model._target_=os.makedirs")
    assert not marker.exists()


def test_trust_comes_from_the_command_line_not_the_file(trained_run: Path, tmp_path: Path):
    """A class named by trust= is accepted (here torch's own CrossEntropyLoss with an extra key)."""
    ckpt = crafted(trained_run, tmp_path, _set("config.loss.reduction", "mean"))
    refused = cli("fmnist-eval", f"ckpt={ckpt}", "progress=false", cwd=tmp_path, check=False)
    one_line_refusal(refused, "trust=[torch.nn.CrossEntropyLoss]")
    accepted = cli("fmnist-eval", f"ckpt={ckpt}", "progress=false", "trust=[torch.nn.CrossEntropyLoss]",
                   cwd=tmp_path)
    assert "accuracy" in accepted.stdout


def test_a_trusted_class_that_does_not_import_is_one_line(trained_run: Path, tmp_path: Path):
    """Worded as training words it ("cannot import ..."), not as Hydra's three lines joined into one."""
    ckpt = crafted(trained_run, tmp_path, _set("config.model._target_", "nowhere.Net"))
    proc = cli("fmnist-eval", f"ckpt={ckpt}", "progress=false", "trust=[nowhere.Net]", cwd=tmp_path, check=False)
    assert one_line_error(proc) == "fmnist-eval: error: model: cannot import nowhere.Net: No module named 'nowhere'"


def test_a_stored_data_root_is_never_followed(trained_run: Path, tmp_path: Path):
    elsewhere = tmp_path / "etc-like" / "made-by-the-file\x1b[2J"
    ckpt = crafted(trained_run, tmp_path, _set("config.dataset.root", str(elsewhere)))
    proc = cli("fmnist-eval", f"ckpt={ckpt}", "progress=false", cwd=tmp_path)  # reads the user's FMNIST_DATA
    assert "accuracy" in proc.stdout
    assert not elsewhere.parent.exists()
    # Only named, as a hint for a dataset missing here: escaped, never a terminal control sequence.
    output = proc.stdout + proc.stderr
    assert "trained with dataset.root=" in output and "made-by-the-file\\x1b[2J" in output and "\x1b" not in output


WRONG_FIELDS = [
    ("model-not-mapping", _set("model", "weights"), "field 'model'"),
    ("config-not-mapping", _set("config", [1, 2]), "field 'config'"),
    ("metrics-missing", lambda ckpt: ckpt.pop("metrics"), "lacks metrics"),
    ("metrics-wrong", _set("metrics", {"history": "x"}), "field 'metrics'"),
    ("class-names-few", _set("class_names", ["a", "b"]), "class_names"),
    ("class-names-mathtext", _set("class_names", ["$\\x{$"] * 10), "class_names"),
    ("mathtext-in-config", _set("config.dataset.classes", ["$\\x{$"] * 10), "dataset.classes"),
    ("epoch-wrong", _set("epoch", "one"), "field 'epoch'"),
    ("precision-unknown", _set("precision", "int8"), "field 'precision'"),
    ("precision-unhashable", _set("precision", ["bf16"]), "field 'precision'"),
    ("format-version", _set("format_version", 99), "format 99"),
    ("huge-model", _set("config.model.hidden", [65536, 65536]), "do not fit"),
    ("weights-shape", lambda ckpt: ckpt["model"].update({k: torch.zeros(1) for k in list(ckpt["model"])[:1]}),
     "do not fit"),
]


@pytest.mark.parametrize("attack", WRONG_FIELDS, ids=[a[0] for a in WRONG_FIELDS])
def test_checkpoint_fields_of_the_wrong_type_are_one_line_errors(trained_run: Path, tmp_path: Path, attack):
    _, change, needle = attack
    refused_in_process(crafted(trained_run, tmp_path, change), needle)


def test_the_cli_refuses_a_mistyped_field_in_one_line(trained_run: Path, tmp_path: Path):
    ckpt = crafted(trained_run, tmp_path, _set("class_names", ["$\\x{$"] * 10))
    one_line_refusal(cli("fmnist-predict", f"ckpt={ckpt}", cwd=tmp_path, check=False), "class_names")


def test_a_pickle_that_runs_code_is_refused(trained_run: Path, tmp_path: Path):
    marker = tmp_path / "pwned"
    ckpt = crafted(trained_run, tmp_path, lambda c: None)
    ckpt_obj = torch.load(ckpt, weights_only=True)
    ckpt_obj["metrics"]["note"] = MakesDirectory(marker)
    torch.save(ckpt_obj, ckpt)
    proc = cli("fmnist-predict", f"ckpt={ckpt}", cwd=tmp_path, check=False)
    one_line_refusal(proc, "could run code")
    assert not marker.exists()


def test_a_compressed_record_is_refused_before_it_is_inflated(trained_run: Path, tmp_path: Path):
    """A 1000:1 deflated record: a few MB on disk, gigabytes in memory if torch.load inflated it."""
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(trained_run / "best.pt") as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info), compress_type=zipfile.ZIP_STORED)
        dst.writestr("best/data/999", b"\0" * (64 << 20), compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 2 * (trained_run / "best.pt").stat().st_size + (1 << 20)
    with pytest.raises(UserError, match="compressed record"):
        load_checkpoint(bomb)
    proc = cli("fmnist-eval", f"ckpt={bomb}", cwd=tmp_path, check=False)
    one_line_refusal(proc, "compressed record")


def test_records_claiming_more_than_the_file_holds_are_refused(tmp_path: Path):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(4)}, path)
    data = bytearray(path.read_bytes())
    # Corrupt the central directory's uncompressed size of the first record to claim 1 GiB.
    at = data.rfind(b"PK\x01\x02")
    first = data.find(b"PK\x01\x02")
    assert at > 0
    struct.pack_into("<I", data, first + 24, 1 << 30)
    path.write_bytes(bytes(data))
    with pytest.raises(UserError):
        load_checkpoint(path)


# ---- datasets ------------------------------------------------------------------------------------------


def write_cifar_folder(root: Path, replace: dict[str, object]) -> Path:
    """A valid tiny CIFAR-10 folder in which the named files hold `replace[name]` instead."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = make_images(50, 32, 3, seed=5)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"batch_label": name, "labels": [int(x) for x in labels], "data": images.reshape(50, -1)}
        with open(folder / name, "wb") as f:
            pickle.dump(replace.get(name, entry), f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(replace.get("batches.meta", {"label_names": CIFAR_CLASSES}), f, protocol=2)
    return root


@pytest.mark.parametrize("name", ["data_batch_1", "batches.meta"])
def test_a_crafted_cifar_file_is_not_a_cifar_batch(tmp_path: Path, name: str):
    marker = tmp_path / "pwned"
    root = write_cifar_folder(tmp_path / "data", {name: {"data": MakesDirectory(marker)}})
    proc = cli("fmnist-train", "dataset=cifar10", f"dataset.root={root}", "model=mlp", "epochs=1",
               "progress=false", cwd=tmp_path, check=False)
    one_line_refusal(proc, "is not a CIFAR-10 batch", name)
    assert not marker.exists()


def test_cifar_fields_of_the_wrong_shape_are_refused(tmp_path: Path):
    root = write_cifar_folder(tmp_path / "data", {"test_batch": {"data": [1, 2, 3], "labels": [0]}})
    with pytest.raises(UserError, match="not an N x 3072 uint8 array"):
        sources.LocalCIFAR10(str(root), train=False)


def mnist_spec(root: Path) -> DatasetSpec:
    return DatasetSpec(name="mnist", root=str(root), download=False, classes=tuple("0123456789"), channels=1,
                       image_size=28, mean=(0.13,), std=(0.31,))


def test_a_gzip_bomb_is_refused_while_inflating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sources, "MAX_DATA_FILE_BYTES", 1 << 20)
    write_mnist_like(tmp_path / "data", "MNIST", seed=7)
    raw = tmp_path / "data" / "MNIST" / "raw"
    with gzip.open(raw / "train-images-idx3-ubyte.gz", "wb") as f:
        for _ in range(4):
            f.write(b"\0" * (1 << 20))
    assert (raw / "train-images-idx3-ubyte.gz").stat().st_size < 64 << 10
    sources._decode.cache_clear()
    with pytest.raises(UserError, match="inflates to more than"):
        sources.load_tensors(mnist_spec(tmp_path / "data"), train=True)


def test_the_unpacked_cache_follows_content_not_modification_time(tmp_path: Path):
    """An older copy put back in place must not reuse the newer file's cache (it did, with mtimes)."""
    write_mnist_like(tmp_path / "data", "MNIST", seed=8)
    raw = tmp_path / "data" / "MNIST" / "raw"
    cfg = mnist_spec(tmp_path / "data")
    labels_file = raw / "t10k-labels-idx1-ubyte.gz"
    old = labels_file.read_bytes()
    old_time = labels_file.stat().st_mtime - 3600
    sources._decode.cache_clear()
    _, first = sources.load_tensors(cfg, train=False)
    write_idx(labels_file, ((first.numpy() + 1) % 10))  # new labels, unpacked into the cache
    sources._decode.cache_clear()
    _, second = sources.load_tensors(cfg, train=False)
    assert torch.equal(second, (first + 1) % 10)
    labels_file.write_bytes(old)  # the old file put back, with an old modification time
    os.utime(labels_file, (old_time, old_time))
    sources._decode.cache_clear()
    _, third = sources.load_tensors(cfg, train=False)
    assert torch.equal(third, first)
    sources._decode.cache_clear()


def test_the_dataloader_path_checks_labels_before_training(tmp_path: Path):
    write_mnist_like(tmp_path / "data", "MNIST", seed=9)
    raw = tmp_path / "data" / "MNIST" / "raw"
    _, labels = make_images(100, 28, 1, seed=10)
    labels[3] = 200
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", labels)
    proc = cli("fmnist-train", "dataset=mnist", f"dataset.root={tmp_path / 'data'}", "model=mlp", "epochs=1",
               "data.loader=torchvision", "num_workers=0", "progress=false", cwd=tmp_path, check=False)
    one_line_refusal(proc, "labels in [0, 200]")
    assert "epoch 1/1" not in proc.stdout  # found before training, not after it


# ---- images --------------------------------------------------------------------------------------------


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose header is rewritten to claim width x height pixels (CRC fixed)."""
    from PIL import Image

    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_a_decompression_bomb_image_is_refused_from_its_header(trained_run: Path, tmp_path: Path):
    for side, needle in ((100_000, "more than 64,000,000 pixels"), (9_000, "claims 9000x9000 pixels")):
        bomb = png_claiming(tmp_path / "bomb.png", side, side)  # beyond Pillow's own bound, and within it
        proc = cli("fmnist-predict", f"ckpt={trained_run / 'best.pt'}", f"image={bomb}", cwd=tmp_path, check=False)
        one_line_refusal(proc, needle)


def test_a_non_image_file_is_refused(trained_run: Path, tmp_path: Path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    proc = cli("fmnist-predict", f"ckpt={trained_run / 'best.pt'}", f"image={fake}", cwd=tmp_path, check=False)
    one_line_refusal(proc, "is not an image")


def test_a_postscript_file_named_png_is_never_run(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Pillow would recognise EPS by its content and render it with Ghostscript (here a stand-in `gs` on the PATH
    that only notes it was run): a program from the file's author."""
    bin_dir, ran = tmp_path / "bin", tmp_path / "gs-ran"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f'#!/bin/sh\necho "$@" >> {ran}\n')
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    scan = tmp_path / "scan.png"
    scan.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n%%EndComments\nshowpage\n")
    proc = cli("fmnist-predict", f"ckpt={trained_run / 'best.pt'}", f"image={scan}", cwd=tmp_path, check=False)
    assert not ran.exists(), f"gs {ran.read_text()}"
    one_line_refusal(proc, "is not an image that can be read", "reads PNG, JPEG")


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path: Path):
    import numpy as np
    from PIL import Image

    from fmnist.inference.images import load_image_file

    ramp = (np.linspace(0, 65535, 28 * 28).reshape(28, 28)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    image = load_image_file(tmp_path / "deep.png", channels=1, size=28, invert=False)
    expected = torch.from_numpy(np.round(ramp / 257.0).astype(np.uint8))
    assert (image[0].int() - expected.int()).abs().max() <= 1  # a ramp, not a white square
    assert 120 < image.float().mean() < 135


@pytest.mark.parametrize(("ink", "mode"), [((0, 0, 0), "RGBA"), ((255, 255, 255), "RGBA"), ((0, 0, 0), "LA"),
                                         ((0, 0, 0), "P")])
def test_a_drawing_on_a_transparent_canvas_keeps_its_strokes(tmp_path: Path, ink: tuple[int, int, int], mode: str):
    """A black "1" on a transparent canvas (a drawing app's export) became an all-black picture: transparent pixels
    are black underneath, and converting dropped the alpha. Whatever the ink, the model sees MNIST's look: a light
    stroke on a dark ground."""
    from PIL import Image, ImageDraw

    from fmnist.inference.images import load_image_file

    if mode == "P":  # a palette image whose entry 0, the canvas, is transparent (GIF-style): black underneath
        drawing = Image.new("P", (100, 100), 0)
        drawing.putpalette([0, 0, 0, *ink])
        ImageDraw.Draw(drawing).line([(50, 15), (50, 85)], fill=1, width=10)
        drawing.save(tmp_path / "one.png", transparency=0)
    else:
        drawing = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
        ImageDraw.Draw(drawing).line([(50, 15), (50, 85)], fill=(*ink, 255), width=10)
        drawing.convert(mode).save(tmp_path / "one.png")
    image = load_image_file(tmp_path / "one.png", channels=1, size=28)[0].float()
    assert image[6:22, 13:15].mean() > 200 and image[:, :5].mean() < 30  # the stroke light, the ground dark


def test_json_output_never_prints_nan(trained_run: Path, tmp_path: Path):
    """A diverged model's NaN probabilities print as null: valid JSON for any parser."""
    import json

    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    broken = copy.deepcopy(ckpt)
    broken["model"] = {k: torch.full_like(v, float("nan")) for k, v in ckpt["model"].items()}
    path = tmp_path / "nan.pt"
    torch.save(broken, path)
    proc = cli("fmnist-predict", f"ckpt={path}", "index=0", "format=json", cwd=tmp_path)
    line = proc.stdout.strip().splitlines()[-1]
    assert "NaN" not in line
    result = json.loads(line)
    assert result["topk"][0]["probability"] is None
