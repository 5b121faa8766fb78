"""Every figure fmnist draws. The only module that imports matplotlib (Agg: no display needed).

torch only for type hints: a parallel sweep's summary draws its chart in a process that has not imported torch
(2.3-2.6 s on a 2-core VM), and the figures of a run take tensors from a caller that has.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fmnist.artifacts.atomic import write_atomically  # noqa: E402

if TYPE_CHECKING:
    import torch

    from fmnist.artifacts.report import Mistakes

GOOD, BAD, NEUTRAL = "#2a9d4b", "#d1352b", "#4c72b0"


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write the figure whole or not at all (a full disk leaves the previous picture, and one line)."""
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def _as_display(image: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """(C, H, W) uint8 -> an array imshow understands, and the colormap for grayscale."""
    array = image.detach().cpu().numpy()
    if array.shape[0] == 1:
        return array[0], "gray"
    return array.transpose(1, 2, 0), None


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train and validation, side by side; the best epoch (the weights kept in
    best.pt) is marked. A short run keeps a readable epoch axis (no lone dot on a 0.96-1.04 scale)."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    val_acc = [100 * r["val_acc"] for r in history]
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, val_acc, "s-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    finite = [(e, a) for e, a in zip(epochs, val_acc, strict=True) if np.isfinite(a)]
    if finite:
        best_epoch, best_acc = max(finite, key=lambda p: p[1])  # the first of equals, as training keeps it
        for ax in (ax_loss, ax_acc):
            ax.axvline(best_epoch, color=GOOD, linestyle=":", linewidth=1)
        ax_acc.plot([best_epoch], [best_acc], "*", color=GOOD, ms=14, zorder=5,
                    label=f"best: epoch {best_epoch}, {best_acc:.2f}%")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        _epoch_axis(ax, epochs)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _epoch_axis(ax: plt.Axes, epochs: list[int]) -> None:
    """Whole epochs on the x axis, with room on both sides: a 1-epoch run is one tick, not a 0.96-1.04 scale."""
    if not epochs:
        return
    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if max(epochs) - min(epochs) < 12:
        ax.set_xticks(range(min(epochs), max(epochs) + 1))
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


def _percent(value: float) -> str:
    """A percentage as the figures print it: one decimal, never 0 for what is not none nor 100 for what is not
    all (1 image of 980 in the row-normalised confusion matrix printed as 0.00 of a fraction, which looked like
    no mistake at all; a wrong prediction at 99.96% as 100%)."""
    if 0 < value < 0.05:
        return "<0.1"
    return ">99.9" if 99.95 <= value < 100 else f"{value:.1f}"


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: Path, title: str = "") -> Path:
    """Counts on the left, row-normalised (recall per true class, in percent) on the right; empty cells stay
    blank."""
    counts = confusion.cpu().numpy()
    rows = counts.sum(1, keepdims=True)
    normalised = 100 * np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    n = len(class_names)
    size = max(5.0, 0.55 * n + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, data, label, text in ((axes[0], counts, "count", str), (axes[1], normalised, "% of true class",
                                                                     _percent)):
        im = ax.imshow(data, cmap="Blues")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
        ax.set(xlabel="predicted", ylabel="true")
        threshold = data.max() / 2 if data.max() > 0 else 1
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, text(data[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if data[i, j] > threshold else "black")
    axes[0].set_title("Confusion matrix (counts)")
    axes[1].set_title("Row-normalised (% of each true class)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class(report: dict[str, Any], path: Path, title: str = "") -> Path:
    """Per-class accuracy as sorted horizontal bars from 0 (a truncated axis exaggerates differences),
    overall accuracy as a line."""
    rows = sorted(report["classes"], key=lambda r: r["accuracy"])
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.5))
    accs = [100 * r["accuracy"] for r in rows]
    bars = ax.barh(range(len(rows)), accs, color=NEUTRAL)
    ax.set_yticks(range(len(rows)), [r["class"] for r in rows])  # positions: "0".."9" are names, not numbers
    overall = 100 * report["accuracy"]
    ax.axvline(overall, color=BAD, linestyle="--", label=f"overall {overall:.2f}%")
    for bar, acc in zip(bars, accs, strict=True):  # on white, above the overall line where they meet
        ax.text(bar.get_width() + 0.3, bar.get_y() + bar.get_height() / 2, _percent(acc), va="center", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.set(xlabel="accuracy (%)", xlim=(0, 108), title=title or "Per-class accuracy")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the bars, never over one
    fig.tight_layout()
    return _save(fig, path)


def plot_mistakes(mistakes: Mistakes, class_names: list[str], path: Path) -> Path:
    """The most confidently misclassified images with their true and predicted labels and the confidence.

    One picture of all the images (each over a white band for its caption) on a single axes: a grid of 24
    axes took 1.6-3.1 s to draw on a 2-core Xeon, this 0.5-0.6 s (2026-12-02, after the first figure)."""
    n = len(mistakes.images)
    cols = min(6, max(n, 1))
    grid_rows = max(1, -(-n // cols))
    _, channels, height, width = mistakes.images.shape
    gap, band = max(1, width // 10), height // 3  # between tiles; above each tile, for its two-line caption
    cell_w, cell_h = width + gap, height + band
    sheet = mistakes.images.new_full((channels, grid_rows * cell_h, cols * cell_w), 255, device="cpu")  # uint8
    fig_w = 2.1 * cols
    fig, ax = plt.subplots(figsize=(fig_w, fig_w * sheet.shape[1] / sheet.shape[2] + 0.5))
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - 0.5 / fig.get_figheight())  # the title above
    for k, (image, t, p, c) in enumerate(zip(mistakes.images, mistakes.true, mistakes.predicted,
                                             mistakes.confidence, strict=True)):
        top, left = (k // cols) * cell_h + band, (k % cols) * cell_w + gap // 2
        sheet[:, top:top + height, left:left + width] = image.detach().cpu()
        ax.text(left + width / 2, top - 1, f"true: {class_names[t]}\npred: {class_names[p]} ({_percent(100 * c)}%)",
                ha="center", va="bottom", fontsize=8, color=BAD)
    array, cmap = _as_display(sheet)
    ax.imshow(array, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    if n == 0:
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"Most confidently wrong ({mistakes.wrong} of {mistakes.total} misclassified)")
    return _save(fig, path)


def plot_prediction(image: torch.Tensor, probs: torch.Tensor, class_names: list[str], predicted: int,
                    true: int | None, path: Path, caption: str = "") -> Path:
    """The image on the left, every class probability on the right with the prediction highlighted.

    The title is green when the prediction matches the known label, red when not, neutral when unknown.
    """
    fig, (ax_img, ax_bar) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1, 1.4]})
    array, cmap = _as_display(image)
    ax_img.imshow(array, cmap=cmap)
    ax_img.axis("off")
    if caption:
        ax_img.set_title(caption, fontsize=9)
    values = probs.detach().cpu().numpy() * 100
    colors = [NEUTRAL if i != predicted else (BAD if true is not None and true != predicted else GOOD)
              for i in range(len(class_names))]
    ax_bar.barh(range(len(class_names)), values, color=colors)
    ax_bar.set_yticks(range(len(class_names)), class_names)
    ax_bar.invert_yaxis()
    ax_bar.set(xlim=(0, 100), xlabel="probability (%)")
    for i, v in enumerate(values):  # beside its bar, or inside it in white where the bar fills the axis
        inside = v > 90
        ax_bar.text(v - 1 if inside else v + 1, i, _percent(v), va="center", ha="right" if inside else "left",
                    fontsize=8, color="white" if inside else "black")
    head = f"predicted: {class_names[predicted]} ({_percent(values[predicted])}%)"
    if true is None:
        fig.suptitle(head, color="black")
    else:
        fig.suptitle(f"{head}   true: {class_names[true]}", color=GOOD if true == predicted else BAD)
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(rows: list[dict[str, Any]], parameter: str | None, path: Path) -> Path:
    """Validation accuracy per epoch for every job; with one swept numeric parameter, accuracy against it."""
    done = [r for r in rows if r["history"]]
    panels = 2 if parameter else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0, 0]
    for r in sorted(done, key=lambda r: int(r["job"]) if r["job"].isdigit() else 0):
        epochs = [h["epoch"] for h in r["history"]]
        style = "x--" if r["status"] == "failed" else "o-"
        size = 3 if len(epochs) > 1 else 7
        label = textwrap.shorten(f"#{r['job']} {r['swept']}", width=60, placeholder=" ...")  # whole words
        ax.plot(epochs, [100 * h["val_acc"] for h in r["history"]], style, ms=size,
                label=label.replace("$", r"\$"))  # text, never mathtext
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"{len(rows)} jobs")
    ax.grid(alpha=0.3)
    _epoch_axis(ax, [h["epoch"] for r in done for h in r["history"]])
    if done and len(done) <= 12:
        ax.legend(fontsize=7)
    if parameter:
        ax = axes[0, 1]
        points = sorted((float(r["params"][parameter]), 100 * r["best_val_acc"]) for r in done
                        if r["status"] != "failed" and r["best_val_acc"] is not None)
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, "o-", color=NEUTRAL)
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
        ax.set(xlabel=parameter, ylabel="best validation accuracy (%)", title=f"accuracy against {parameter}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
