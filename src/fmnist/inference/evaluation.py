"""fmnist-eval's work: a checkpoint on one split, per-class numbers, and the figures that show them."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from typing import Any

from fmnist.artifacts.atomic import ensure_dir, write_atomically
from fmnist.artifacts.html import eval_page
from fmnist.artifacts.plots import plot_confusion, plot_mistakes, plot_per_class
from fmnist.artifacts.report import class_report, format_report, most_confident_mistakes
from fmnist.artifacts.rundir import CONFUSION, EVAL_JSON, MISCLASSIFIED, PER_CLASS, REPORT, eval_dir
from fmnist.config import EvalConfig
from fmnist.data.batches import load_split, make_batches
from fmnist.data.transforms import TTA, mirroring_note, unflipped_note
from fmnist.inference.restore import restore, say_where_the_data_is
from fmnist.runtime import precision_name, show_progress
from fmnist.train.loop import evaluate
from fmnist.train.setup import build_loss

log = logging.getLogger("fmnist")


def run_eval(settings: EvalConfig) -> dict[str, Any]:
    """Evaluate, print the table, write eval.json, the figures and report.html; returns what eval.json holds."""
    r = restore(settings)
    cfg, split = r.cfg, settings.split
    say_where_the_data_is(r)
    batches = make_batches(cfg.dataset, split, r.device, batch_size=settings.batch_size or cfg.eval_batch_size,
                           seed=cfg.seed, training=False, loader=cfg.loader, num_workers=cfg.num_workers)
    tta = settings.tta or cfg.tta
    # training's own tta was said in training
    if settings.tta and (note := mirroring_note(cfg.dataset, tta) or unflipped_note(cfg.dataset.augment, tta)):
        print(note, file=sys.stderr)
    result = evaluate(r.model, batches, build_loss(cfg).to(r.device), cfg.dataset.num_classes, device=r.device,
                      dtype=r.dtype, progress=show_progress(settings.progress), keep_probs=True, desc=split,
                      tta=TTA(tta, cfg.dataset))
    report = class_report(result.confusion, r.class_names)
    recorded = (r.ckpt["metrics"].get("test") or {}).get("accuracy")
    out_dir = ensure_dir(settings.out_path or eval_dir(r.path, split))
    precision = precision_name(r.dtype)
    summary = {
        "checkpoint": str(r.path),
        "split": split,
        "tta": tta,
        "device": str(r.device),
        "precision": precision,
        "loss": result.loss,
        **report,
        "confusion_matrix": result.confusion.tolist(),
        "recorded_test_accuracy": recorded,
    }
    text = json.dumps(summary, indent=2) + "\n"
    write_atomically(out_dir / EVAL_JSON, lambda tmp: tmp.write_text(text))

    print(f"{r.title} | {r.path} | split {split} ({result.samples} images) on {r.device} in {precision}")
    print(format_report(report, loss=result.loss))
    if split == "test" and recorded is not None and tta != cfg.tta:  # training's number is the baseline here
        print(f"the test accuracy recorded at training time: {recorded:.2%} with tta={cfg.tta}, "
              f"{100 * (result.accuracy - recorded):+.2f} points with tta={tta}")
    elif split == "test" and recorded is not None:
        same = "matches" if recorded == result.accuracy else "DIFFERS FROM"
        trained = r.ckpt.get("precision")
        why = f" (trained in {trained}, evaluated in {precision})" if same != "matches" and trained not in (
            None, precision) else ""
        print(f"{same} the test accuracy recorded at training time ({recorded:.2%}){why}")

    title = f"{r.title}, {split} split"
    plot_per_class(report, out_dir / PER_CLASS, title=f"{title}: per-class accuracy")
    plot_confusion(result.confusion, r.class_names, out_dir / CONFUSION, title=title)
    assert result.probs is not None and result.labels is not None
    images, _ = load_split(cfg.dataset, split, cfg.seed)
    plot_mistakes(most_confident_mistakes(images, result.probs, result.labels), r.class_names,
                  out_dir / MISCLASSIFIED)
    page = eval_page(summary, out_dir, name=r.title, command=shlex.join(["fmnist-eval", *sys.argv[1:]]))
    write_atomically(out_dir / REPORT, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    log.info("wrote %s, %s, %s, %s, %s in %s", EVAL_JSON, PER_CLASS, CONFUSION, MISCLASSIFIED, REPORT, out_dir)
    return summary

