"""fmnist-eval's work: a checkpoint on one split, per-class numbers, and the figures that show them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from fmnist.allowlist import check_trust
from fmnist.atomic import ensure_dir, write_atomically
from fmnist.build import build_loss
from fmnist.config import EVAL_RULES, validate
from fmnist.engine import evaluate
from fmnist.loaders import load_split, make_batches
from fmnist.metrics import class_report, format_report
from fmnist.plots import plot_confusion, plot_misclassified, plot_per_class
from fmnist.restore import restore
from fmnist.runtime import show_progress

log = logging.getLogger("fmnist")

MISCLASSIFIED_SHOWN = 24


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate, print the table, write eval.json and the figures; returns what eval.json holds."""
    validate(cfg, EVAL_RULES)
    r = restore(cfg.ckpt, cfg.dataset, cfg.device, cfg.precision, check_trust(cfg.trust))
    batch_size = cfg.batch_size or r.cfg.eval_batch_size
    batches = make_batches(r.cfg, cfg.split, r.device, batch_size=batch_size, training=False)
    result = evaluate(r.model, batches, build_loss(r.cfg).to(r.device), r.cfg.dataset.num_classes, device=r.device,
                      dtype=r.dtype, progress=show_progress(cfg.progress), keep_probs=True, desc=cfg.split)
    report = class_report(result.confusion, r.class_names)
    recorded = (r.ckpt["metrics"].get("test") or {}).get("accuracy")
    out_dir = Path(cfg.out_dir) if cfg.out_dir else r.path.parent / f"eval-{cfg.split}"
    ensure_dir(out_dir)
    summary = {
        "checkpoint": str(r.path),
        "split": cfg.split,
        "device": str(r.device),
        "loss": result.loss,
        **report,
        "confusion_matrix": result.confusion.tolist(),
        "recorded_test_accuracy": recorded,
    }
    text = json.dumps(summary, indent=2) + "\n"
    write_atomically(out_dir / "eval.json", lambda tmp: tmp.write_text(text))

    print(f"{r.title} | {r.path} | split {cfg.split} ({result.samples} images) on {r.device}")
    print(format_report(report, loss=result.loss))
    if cfg.split == "test" and recorded is not None:
        same = "matches" if recorded == result.accuracy else "DIFFERS FROM"
        print(f"{same} the test accuracy recorded at training time ({recorded:.2%})")

    title = f"{r.title}, {cfg.split} split"
    plot_per_class(report, out_dir / "per_class.png", title=f"{title}: per-class accuracy")
    plot_confusion(result.confusion, r.class_names, out_dir / "confusion_matrix.png", title=title)
    _plot_most_confident_mistakes(r.cfg, cfg.split, result.probs, result.labels, r.class_names,
                                  out_dir / "misclassified.png")
    log.info("wrote eval.json, per_class.png, confusion_matrix.png, misclassified.png in %s", out_dir)
    return summary


def _plot_most_confident_mistakes(cfg: DictConfig, split: str, probs: torch.Tensor | None, labels: torch.Tensor | None,
                                  class_names: list[str], path: Path) -> None:
    assert probs is not None and labels is not None
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:MISCLASSIFIED_SHOWN]
    images, _ = load_split(cfg, split)
    plot_misclassified(images[order], [class_names[int(labels[i])] for i in order],
                       [class_names[int(predicted[i])] for i in order], [float(confidence[i]) for i in order], path,
                       title=f"Most confidently wrong ({len(wrong)} of {len(labels)} misclassified)")
