"""Numbers derived from a confusion matrix, and the per-epoch history files of a run."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch

from fmnist.atomic import write_atomically
from fmnist.errors import UserError

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "samples_per_s",
                  "warmup_s")


def class_report(confusion: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Per class: support, correct, accuracy (= recall), precision, recall, F1; overall accuracy and macro-F1."""
    cm = confusion.to(torch.float64)
    correct = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    recall = torch.where(support > 0, correct / support.clamp(min=1), torch.zeros_like(correct))
    precision = torch.where(predicted > 0, correct / predicted.clamp(min=1), torch.zeros_like(correct))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(denom))
    rows = [
        {
            "class": name,
            "support": int(support[i]),
            "correct": int(correct[i]),
            "accuracy": float(recall[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
        }
        for i, name in enumerate(class_names)
    ]
    total = float(cm.sum())
    return {
        "classes": rows,
        "accuracy": float(correct.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()),
        "samples": int(total),
    }


def format_report(report: dict[str, Any], loss: float | None = None) -> str:
    """The report as an aligned text table, one row per class, then the overall numbers."""
    width = max(len("class"), *(len(r["class"]) for r in report["classes"]))
    head = f"{'class':<{width}}  {'support':>7}  {'correct':>7}  {'acc':>7}  {'prec':>7}  {'recall':>7}  {'f1':>7}"
    lines = [head, "-" * len(head)]
    for r in report["classes"]:
        lines.append(
            f"{r['class']:<{width}}  {r['support']:>7}  {r['correct']:>7}  {r['accuracy']:>7.2%}  "
            f"{r['precision']:>7.2%}  {r['recall']:>7.2%}  {r['f1']:>7.4f}"
        )
    lines.append("-" * len(head))
    tail = f"accuracy {report['accuracy']:.2%} ({report['samples']} images)   macro-F1 {report['macro_f1']:.4f}"
    if loss is not None:
        tail += f"   loss {loss:.4f}"
    lines.append(tail)
    return "\n".join(lines)


def write_history(out_dir: Path, history: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """metrics.csv (one row per epoch) and metrics.json (history plus the run's summary and test result)."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows({k: row.get(k) for k in HISTORY_FIELDS} for row in history)  # older runs lack warmup_s
    write_atomically(out_dir / "metrics.csv", lambda tmp: tmp.write_text(table.getvalue()))
    text = json.dumps({**summary, **written_by(), "history": history}, indent=2) + "\n"
    write_atomically(out_dir / "metrics.json", lambda tmp: tmp.write_text(text))


def written_by() -> dict[str, Any]:
    """Which process wrote a metrics.json, so a sweep summary can tell a crashed job from a running one."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def record_status(out_dir: Path, status: str, error: str | None = None) -> None:
    """Set a run's metrics.json status ("running", "failed", "interrupted"), keeping whatever history it has.

    "running" also records this process id, so a summary can tell a crashed run (its process gone) from a
    live one. Best effort: an unwritable run directory is already what the error being recorded says.
    """
    path = out_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        metrics = {}
    if not isinstance(metrics, dict):
        metrics = {}
    metrics.update({"status": status, **written_by()})
    if error is not None:
        metrics["error"] = error
    metrics.setdefault("history", [])
    text = json.dumps(metrics, indent=2) + "\n"
    with contextlib.suppress(UserError):
        write_atomically(path, lambda tmp: tmp.write_text(text))
