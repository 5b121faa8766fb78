"""fmnist-eval and fmnist-predict on a checkpoint trained through the CLI, and every bad input."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_real_png, cli, console_script, one_line_error
from PIL import Image

from fmnist.artifacts.checkpoint import load_checkpoint
from fmnist.config import stored_train_config
from fmnist.data.batches import load_split
from fmnist.runtime import in_hardware
from fmnist.train.setup import build_model


def independent_predictions(ckpt_path: Path, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels computed here, without the engine: model(x) one image at a time."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = stored_train_config(ckpt["config"], {})
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    images, labels = load_split(cfg.dataset, split, cfg.seed)
    mean = torch.tensor(cfg.dataset.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.dataset.std).view(1, -1, 1, 1)
    with torch.no_grad():
        preds = torch.cat([model((img[None].float() / 255 - mean) / std).argmax(1) for img in images])
    return preds, labels


def test_eval_table_and_json_agree_with_an_independent_count(trained_run: Path):
    proc = cli("fmnist-eval", f"ckpt={trained_run / 'best.pt'}", cwd=trained_run.parent)
    report = json.loads((trained_run / "eval-test" / "eval.json").read_text())
    preds, labels = independent_predictions(trained_run / "best.pt")
    assert report["accuracy"] == pytest.approx((preds == labels).float().mean().item(), abs=1e-12)
    for k, row in enumerate(report["classes"]):
        mine = labels == k
        assert row["support"] == int(mine.sum())
        assert row["correct"] == int((preds[mine] == k).sum())
        predicted_k = preds == k
        expected_precision = float((labels[predicted_k] == k).float().mean()) if predicted_k.any() else 0.0
        assert row["precision"] == pytest.approx(expected_precision)
    assert report["accuracy"] == report["recorded_test_accuracy"]  # exactly what training recorded
    assert f"accuracy {report['accuracy']:.2%}" in proc.stdout
    assert "matches the test accuracy recorded" in proc.stdout
    assert "T-shirt/top" in proc.stdout and "macro-F1" in proc.stdout
    for png in ("per_class.png", "confusion_matrix.png", "misclassified.png"):
        assert_real_png(trained_run / "eval-test" / png)
    page = (trained_run / "eval-test" / "report.html").read_text()
    assert "test split" in page and "T-shirt/top" in page and 'href="../report.html"' in page


def test_eval_computes_in_the_precision_training_recorded(trained_run: Path, tmp_path: Path):
    """With precision=auto in the training config, fmnist-eval computes as training did (the checkpoint
    records it) rather than as auto would choose on this CPU, so its accuracy is training's to the digit; a
    precision this CPU has no hardware for falls back to auto's choice here."""
    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    assert ckpt["precision"] == "fp32" and ckpt["config"]["precision"] == "fp32"
    ckpt["config"]["precision"] = "auto"  # a conv net: auto alone would pick bf16 on a CPU with AMX
    torch.save(ckpt, tmp_path / "fp32.pt")
    proc = cli("fmnist-eval", f"ckpt={tmp_path / 'fp32.pt'}", f"out_dir={tmp_path / 'a'}", "device=cpu",
               "progress=false", cwd=tmp_path)
    assert " on cpu in fp32" in proc.stdout and "matches the test accuracy recorded" in proc.stdout
    assert json.loads((tmp_path / "a" / "eval.json").read_text())["precision"] == "fp32"
    ckpt["precision"] = "bf16"  # as if trained on a machine with bf16 hardware
    torch.save(ckpt, tmp_path / "bf16.pt")
    proc = cli("fmnist-eval", f"ckpt={tmp_path / 'bf16.pt'}", f"out_dir={tmp_path / 'b'}", "device=cpu",
               "progress=false", cwd=tmp_path)
    here = "bf16" if in_hardware(torch.bfloat16, torch.device("cpu")) else "fp32"
    assert f" on cpu in {here}" in proc.stdout
    ckpt["precision"], ckpt["metrics"]["test"]["accuracy"] = "fp32", 0.01  # a recorded accuracy that differs
    torch.save(ckpt, tmp_path / "differs.pt")
    for precision, why in (("bf16", " (trained in fp32, evaluated in bf16)"), ("fp32", "")):
        proc = cli("fmnist-eval", f"ckpt={tmp_path / 'differs.pt'}", f"precision={precision}", "device=cpu",
                   f"out_dir={tmp_path / precision}", "progress=false", cwd=tmp_path)
        assert f"DIFFERS FROM the test accuracy recorded at training time (1.00%){why}\n" in proc.stdout


@pytest.mark.parametrize("tta", ["flip", "flip_translate"])
def test_eval_with_tta_says_so_and_counts_every_image(trained_run: Path, tmp_path: Path, tta: str):
    proc = cli("fmnist-eval", f"ckpt={trained_run / 'best.pt'}", f"tta={tta}", f"out_dir={tmp_path}",
               "progress=false", cwd=tmp_path)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["tta"] == tta and report["samples"] == 100 and report["accuracy"] > 0.5
    # training tested without tta: its accuracy is the baseline, not a number this one should have matched
    recorded = report["recorded_test_accuracy"]
    assert (f"the test accuracy recorded at training time: {recorded:.2%} with tta=none, "
            f"{100 * (report['accuracy'] - recorded):+.2f} points with tta={tta}\n") in proc.stdout
    assert "DIFFERS" not in proc.stdout
    # ... and why it may be lower: the net was trained without mirror images
    assert f"tta={tta} averages in mirror images, which a model trained with dataset.augment.hflip=false" in proc.stderr


def test_eval_without_ckpt_uses_the_latest_run(tmp_path: Path, trained_run: Path):
    run = tmp_path / "outputs" / "2026-01-01" / "00-00-00"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval-*"))
    proc = cli("fmnist-eval", "split=val", f"out_dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert str(Path("outputs") / "2026-01-01" / "00-00-00" / "best.pt") in proc.stderr
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["split"] == "val" and report["samples"] == 40  # 10% of the 400 training images


def test_ckpt_may_name_a_run_directory_for_its_best_checkpoint(tmp_path: Path, trained_run: Path):
    proc = cli("fmnist-eval", f"ckpt={trained_run}", "split=val", f"out_dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert str(trained_run / "best.pt") in proc.stdout
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["samples"] == 40
    interrupted = tmp_path / "interrupted"  # a run stopped before its first epoch ended: last.pt only
    interrupted.mkdir()
    shutil.copy(trained_run / "last.pt", interrupted / "last.pt")
    assert f"checkpoint {interrupted} is a directory without best.pt (it has last.pt: ckpt={interrupted / 'last.pt'})" \
        in bad_input_error("fmnist-predict", f"ckpt={interrupted}", cwd=tmp_path)


def test_evaluating_last_pt_keeps_the_evaluation_of_best_pt(tmp_path: Path, trained_run: Path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval-*", "predictions"))
    cli("fmnist-eval", f"ckpt={run}", "split=val", cwd=tmp_path)
    best = (run / "eval-val" / "eval.json").read_bytes()
    cli("fmnist-eval", f"ckpt={run / 'last.pt'}", "split=val", cwd=tmp_path)
    assert json.loads((run / "eval-val-last" / "eval.json").read_text())["checkpoint"].endswith("last.pt")
    assert (run / "eval-val" / "eval.json").read_bytes() == best


def test_matplotlibs_first_font_scan_is_not_news(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib"))  # a fresh font cache: it is built now
    monkeypatch.setenv("FMNIST_TEST_FORK", "0")  # a process of its own: the fork server has matplotlib loaded
    proc = cli("fmnist-predict", f"ckpt={trained_run}", "index=1", f"out_dir={tmp_path}", cwd=tmp_path)
    assert (tmp_path / "matplotlib").is_dir() and "fontManager" not in proc.stdout + proc.stderr, proc.stderr


def test_without_ckpt_or_given_its_folder_a_sweep_gives_its_best_job_and_pictures_are_kept(tmp_path: Path,
                                                                                          trained_run: Path):
    sweep = tmp_path / "multirun" / "2026-01-01" / "00-00-00"
    for job, acc in (("0", 0.9), ("1", 0.5)):  # job 1 finished last, job 0 is the better one
        shutil.copytree(trained_run, sweep / job, ignore=shutil.ignore_patterns("eval-*", "predictions"))
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        (sweep / job / "metrics.json").write_text(json.dumps({**metrics, "best_val_acc": acc}))
    (sweep / "multirun.yaml").write_text("{}\n")
    os.utime(sweep / "1" / "best.pt", (2e9, 2e9))
    proc = cli("fmnist-predict", "index=1", cwd=tmp_path)
    assert "the best job of the latest sweep" in proc.stderr and str(Path("00-00-00") / "0" / "best.pt") in proc.stderr
    cli("fmnist-predict", "index=2", cwd=tmp_path)
    assert_real_png(sweep / "0" / "predictions" / "prediction-test-1.png")  # the second picture did not replace it
    assert_real_png(sweep / "0" / "predictions" / "prediction-test-2.png")
    # the sweep's folder named: its best job too (it was "a directory without best.pt")
    proc = cli("fmnist-eval", f"ckpt={sweep}", cwd=tmp_path)
    assert f"ckpt={sweep} is a sweep: its best job, {sweep / '0' / 'best.pt'} (job 0, val 90.00%" in proc.stderr
    assert (sweep / "0" / "eval-test" / "eval.json").is_file() and not (sweep / "1" / "eval-test").exists()


def test_no_run_found_says_how_to_get_one(tmp_path: Path):
    for tool in ("fmnist-eval", "fmnist-predict"):
        proc = cli(tool, cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "no trained model found" in proc.stderr and "ckpt=" in proc.stderr


def test_predict_by_index_is_right_and_seed_is_reproducible(trained_run: Path, tmp_path: Path):
    ckpt = trained_run / "best.pt"
    preds, labels = independent_predictions(ckpt)
    names = load_checkpoint(ckpt)["class_names"]
    out = json.loads(cli("fmnist-predict", f"ckpt={ckpt}", "index=7", "format=json", f"out_dir={tmp_path}",
                         cwd=tmp_path).stdout)
    assert out["index"] == 7 and out["true"] == names[int(labels[7])]
    assert out["predicted"] == names[int(preds[7])] and len(out["topk"]) == 3
    assert out["topk"][0]["class"] == out["predicted"]
    assert_real_png(tmp_path / "prediction-test-7.png")
    preds, labels = independent_predictions(ckpt, "val")  # the training run's held-out images, by the same index
    out = json.loads(cli("fmnist-predict", f"ckpt={ckpt}", "split=val", "index=5", "format=json",
                         f"out_dir={tmp_path}", cwd=tmp_path).stdout)
    assert (out["split"], out["index"], out["true"]) == ("val", 5, names[int(labels[5])])
    assert out["predicted"] == names[int(preds[5])]
    assert_real_png(tmp_path / "prediction-val-5.png")
    first = json.loads(cli("fmnist-predict", f"ckpt={ckpt}", "seed=5", "format=json", cwd=tmp_path).stdout)
    again = json.loads(cli("fmnist-predict", f"ckpt={ckpt}", "seed=5", "format=json", cwd=tmp_path).stdout)
    assert first == again


def test_predict_text_output(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # out_dir='~/...' (quoted) is the home's, as ckpt= is
    proc = cli("fmnist-predict", f"ckpt={trained_run / 'best.pt'}", "index=3", "topk=10", "out_dir='~/preds'",
               cwd=tmp_path)
    assert proc.stdout.startswith("test image #3: predicted ")
    rows = [line for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert len(rows) == 10 and rows[0].startswith("   1. ") and rows[9].startswith("  10. "), rows
    assert len({len(row) for row in rows}) == 1 and all(row.endswith("%") for row in rows), rows  # one table
    assert_real_png(tmp_path / "home" / "preds" / "prediction-test-3.png")
    assert not (tmp_path / "~").exists()


def test_predict_on_a_user_png_sees_the_class_it_was_trained_on(trained_run: Path, tmp_path: Path):
    """A photo-like drawing of one class's pattern (the fixture's bright cell k, drawn dark on white at 4x
    the size): fmnist-predict inverts and shrinks it, and the model trained on such patterns names the class."""
    test = load_checkpoint(trained_run / "best.pt")["metrics"]["test"]["per_class_accuracy"]
    names = list(test)
    k = max(range(len(names)), key=lambda i: (test[names[i]], -i))  # a class the model has learned
    assert test[names[k]] >= 0.9
    r, c = divmod(k, 4)
    canvas = np.full((112, 112), 250, dtype=np.uint8)
    canvas[(7 * r + 1) * 4:(7 * r + 8) * 4, 28 * c:28 * (c + 1)] = 10
    Image.fromarray(canvas).save(tmp_path / "photo.png")
    out = json.loads(cli("fmnist-predict", f"ckpt={trained_run / 'best.pt'}", f"image={tmp_path / 'photo.png'}",
                         "format=json", f"out_dir={tmp_path}", cwd=tmp_path).stdout)
    assert out["image"].endswith("photo.png") and out["true"] is None
    assert out["predicted"] == names[k], (names[k], out["topk"])
    assert_real_png(tmp_path / "prediction-photo.png")


def test_predict_on_a_user_image_never_imports_torchvision(trained_run: Path, tmp_path: Path):
    """torchvision's import (2.3-2.5 s on 2 cores, most of it torch._dynamo) reads datasets; your own image
    needs none of it, so that prediction answers in two thirds of the time (docs/benchmarks.md)."""
    Image.fromarray(np.full((28, 28), 128, dtype=np.uint8)).save(tmp_path / "gray.png")
    script = ("import atexit, sys\n"
              "atexit.register(lambda: print('HEAVY', sorted(m for m in ('torchvision', 'torch._dynamo') "
              "if m in sys.modules)))\n"
              f"sys.argv = ['fmnist-predict', 'ckpt={trained_run / 'best.pt'}', 'image={tmp_path / 'gray.png'}', "
              f"'out_dir={tmp_path}']\n"
              "from fmnist.cli.predict import main\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert_real_png(tmp_path / "prediction-gray.png")


def test_eval_into_a_pipe_whose_reader_has_gone_ends_without_a_traceback(trained_run: Path, tmp_path: Path):
    """`fmnist-eval | head -1`: the table is flushed at exit to a reader that has gone; the command ends as Python
    does then (exit 120), with no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the table waits in the buffer
    proc = subprocess.Popen([console_script("fmnist-eval"), f"ckpt={trained_run / 'best.pt'}",
                             f"out_dir={tmp_path / 'eval'}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == 120 and "Traceback" not in stderr, stderr
    assert (tmp_path / "eval" / "eval.json").is_file()


class Exploit:
    """Unpickling this runs code: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def bad_input_error(tool: str, *args: str, cwd: Path) -> str:
    return one_line_error(cli(tool, *args, cwd=cwd, check=False))


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path: Path):
    marker = tmp_path / "pwned"
    torch.save({"format": "fmnist-checkpoint", "payload": Exploit(marker)}, tmp_path / "evil.pt")
    for tool in ("fmnist-eval", "fmnist-predict"):
        assert "refusing to load" in bad_input_error(tool, f"ckpt={tmp_path / 'evil.pt'}", cwd=tmp_path)
    assert not marker.exists()
    with open(tmp_path / "evil.pkl", "wb") as f:  # a plain pickle, not even a torch zip file
        pickle.dump(Exploit(marker), f)
    bad_input_error("fmnist-eval", f"ckpt={tmp_path / 'evil.pkl'}", cwd=tmp_path)
    assert not marker.exists()


def test_broken_checkpoints_are_one_line_errors(trained_run: Path, tmp_path: Path):
    data = (trained_run / "best.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("hello")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    ckpt = load_checkpoint(trained_run / "best.pt")
    torch.save(ckpt["model"], tmp_path / "weights.pt")  # how weights are usually shared: the state dict alone
    del ckpt["class_names"]
    torch.save(ckpt, tmp_path / "old.pt")
    assert "does not exist" in bad_input_error("fmnist-eval", f"ckpt={tmp_path / 'nope.pt'}", cwd=tmp_path)
    assert "not a readable checkpoint" in bad_input_error("fmnist-eval", f"ckpt={tmp_path / 'truncated.pt'}",
                                                          cwd=tmp_path)
    assert "not a readable checkpoint" in bad_input_error("fmnist-predict", f"ckpt={tmp_path / 'text.pt'}",
                                                          cwd=tmp_path)
    assert "not an fmnist checkpoint" in bad_input_error("fmnist-eval", f"ckpt={tmp_path / 'foreign.pt'}",
                                                         cwd=tmp_path)
    assert "lacks class_names" in bad_input_error("fmnist-eval", f"ckpt={tmp_path / 'old.pt'}", cwd=tmp_path)
    assert f"not an fmnist checkpoint: it holds a bare state dict ({len(ckpt['model'])} tensors), without the " \
           "training config" in bad_input_error("fmnist-predict", f"ckpt={tmp_path / 'weights.pt'}", cwd=tmp_path)
    # torch's format before 1.6 is no zip: it was "not a torch.save archive"
    torch.save(ckpt["model"], tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert bad_input_error("fmnist-eval", f"ckpt={tmp_path / 'legacy.pt'}", cwd=tmp_path).endswith(
        "legacy.pt is a torch.save file in the format before torch 1.6, which fmnist does not read (fmnist-train "
        "writes the zip format)")


def test_bad_predict_and_eval_arguments(trained_run: Path, tmp_path: Path):
    ckpt = f"ckpt={trained_run / 'best.pt'}"
    (tmp_path / "notes.png").write_text("not an image")
    assert "does not exist" in bad_input_error("fmnist-predict", ckpt, f"image={tmp_path / 'x.png'}", cwd=tmp_path)
    assert bad_input_error("fmnist-predict", ckpt, f"image={tmp_path}", cwd=tmp_path).endswith(
        "is a directory: name one picture, or several with --multirun (fmnist-predict -m image=A.png,B.png)")
    assert "is not an image" in bad_input_error("fmnist-predict", ckpt, f"image={tmp_path / 'notes.png'}",
                                                cwd=tmp_path)
    assert "out of range" in bad_input_error("fmnist-predict", ckpt, "index=100", cwd=tmp_path)
    assert "index=40 is out of range: the val set has images 0..39" in bad_input_error(
        "fmnist-predict", ckpt, "split=val", "index=40", cwd=tmp_path)
    assert bad_input_error("fmnist-predict", ckpt, "index=3", "invert=true", cwd=tmp_path).endswith(
        "invert=true is for a picture of your own (image=FILE); a dataset image is shown to the model as it is")
    assert "split=train picks a dataset image, image=FILE is your own" in bad_input_error(
        "fmnist-predict", ckpt, "split=train", f"image={tmp_path / 'notes.png'}", cwd=tmp_path)
    assert "index=-1 is not valid" in bad_input_error("fmnist-predict", ckpt, "index=-1", cwd=tmp_path)
    assert "batch_size=0 is not valid" in bad_input_error("fmnist-eval", ckpt, "batch_size=0", cwd=tmp_path)
    assert "precision='fp64' is not valid" in bad_input_error("fmnist-eval", ckpt, "precision=fp64", cwd=tmp_path)
    assert "split='holdout' is not valid: expected test, val or train" in bad_input_error(
        "fmnist-eval", ckpt, "split=holdout", cwd=tmp_path)


def test_predict_multirun_writes_one_picture_per_job(trained_run: Path, tmp_path: Path):
    proc = cli("fmnist-predict", "--multirun", f"ckpt={trained_run / 'best.pt'}", "index=0,1", "format=json",
               "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert (tmp_path / "sweep" / "0" / "prediction-test-0.png").is_file()
    assert (tmp_path / "sweep" / "1" / "prediction-test-1.png").is_file()
    launched = next(line for line in proc.stdout.splitlines() if "Launching" in line)
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] Launching 2 jobs locally", launched)  # as fmnist-train's, not [HYDRA]


def test_an_out_dir_that_is_a_file_is_one_line(trained_run: Path, tmp_path: Path):
    (tmp_path / "taken").write_text("a file, not a directory")
    for tool in ("fmnist-eval", "fmnist-predict"):
        proc = cli(tool, f"ckpt={trained_run / 'best.pt'}", f"out_dir={tmp_path / 'taken'}", "progress=false"
                   if tool == "fmnist-eval" else "index=0", cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "a file is in the way" in proc.stderr.strip().splitlines()[-1]


def test_the_check_before_torch_stops_at_the_first_run_it_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Without ckpt=, the early check only needs one run; choosing the latest walks them all, once, later.
    best.pt without metrics.json beside it (a tracker's copy) is no run."""
    from fmnist.artifacts import rundir
    from fmnist.errors import UserError

    outputs = tmp_path / "outputs"
    (outputs / "mlartifacts" / "1").mkdir(parents=True)
    (outputs / "mlartifacts" / "1" / "best.pt").write_bytes(b"x")
    with pytest.raises(UserError, match="no trained model found under .*outputs/"):
        rundir.check_some_checkpoint((outputs,))
    for run in ("a", "b"):
        (outputs / run).mkdir()
        (outputs / run / "best.pt").write_bytes(b"x")
        (outputs / run / "metrics.json").write_text("{}")
    walked = []
    real_rglob = Path.rglob

    def rglob(self: Path, pattern: str):
        for path in real_rglob(self, pattern):
            walked.append(path)
            yield path

    monkeypatch.setattr(Path, "rglob", rglob)
    rundir.check_some_checkpoint((outputs,))
    first = len(walked)
    assert rundir.latest_checkpoint((outputs,)).parent.name in ("a", "b")
    assert first < len(walked) - first == 3  # the check stopped at the first run; the choice saw all three files


def test_the_row_normalised_confusion_matrix_never_prints_a_mistake_as_zero(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    """As fractions with two decimals, 1 image of 980 printed 0.00: a cell with a mistake that read as none (and
    2999 of 3000 right, rounded, would read as all)."""
    from fmnist.artifacts import plots

    drawn: list = []
    monkeypatch.setattr(plots.plt, "close", drawn.append)
    plots.plot_confusion(torch.tensor([[2999, 1, 0], [30, 970, 0], [0, 0, 5]]), ["a", "b", "c"], tmp_path / "c.png")
    counts, shares = drawn[0].axes[:2]
    assert [t.get_text() for t in counts.texts] == ["2999", "1", "30", "970", "5"]
    assert [t.get_text() for t in shares.texts] == [">99.9", "<0.1", "3.0", "97.0", "100.0"]
    assert_real_png(tmp_path / "c.png")
