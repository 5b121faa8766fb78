"""Per-class numbers from a confusion matrix, the table fmnist-eval prints, and the test images a model
got most confidently wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MISTAKES_SHOWN = 24


@dataclass
class Mistakes:
    """The misclassified images a model was surest about, most confident first."""

    images: torch.Tensor  # (K, C, H, W) uint8
    true: list[int]
    predicted: list[int]
    confidence: list[float]
    wrong: int  # of `total` images
    total: int


def most_confident_mistakes(images: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor,
                            shown: int = MISTAKES_SHOWN) -> Mistakes:
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:shown]
    return Mistakes(images[order], [int(labels[i]) for i in order], [int(predicted[i]) for i in order],
                    [float(confidence[i]) for i in order], len(wrong), len(labels))


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
