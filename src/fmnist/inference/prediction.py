"""fmnist-predict's work: one image (a test image or the user's file) through the model, shown."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from fmnist.artifacts.atomic import ensure_dir
from fmnist.artifacts.plots import plot_prediction
from fmnist.artifacts.rundir import PREDICTIONS
from fmnist.config import PredictConfig
from fmnist.data.batches import load_split
from fmnist.data.transforms import Normalize
from fmnist.errors import UserError
from fmnist.inference.images import load_image_file
from fmnist.inference.restore import restore, say_where_the_data_is
from fmnist.train.loop import predict_probs


def run_predict(cfg: PredictConfig, default_out_dir: Path | None = None) -> dict[str, Any]:
    """Predict, print (text or JSON), save the picture; returns the printed result.

    The picture is named for its input (prediction-test-42.png, prediction-my_shoe.png), in predictions/
    beside the checkpoint by default: predicting another image never overwrites an earlier picture."""
    r = restore(cfg)
    ds = r.cfg.dataset
    result: dict[str, Any] = {"checkpoint": str(r.path)}
    if cfg.image is not None:
        image = load_image_file(cfg.image, ds.channels, ds.image_size, cfg.invert)
        true = None
        result["image"] = str(cfg.image)
        caption = Path(cfg.image).name
        picture = f"prediction-{_safe_stem(Path(cfg.image).stem)}.png"
    else:
        say_where_the_data_is(r)
        images, labels = load_split(ds, cfg.split, r.cfg.seed)
        index = _pick_index(cfg.index, cfg.seed, len(labels), cfg.split)
        image, true = images[index], int(labels[index])
        result.update(split=cfg.split, index=index)
        caption = f"{cfg.split} image #{index}"
        picture = f"prediction-{cfg.split}-{index}.png"
    x = Normalize(ds.mean, ds.std, r.device)(image[None].to(r.device))
    probs = predict_probs(r.model, x, device=r.device, dtype=r.dtype)[0].cpu()
    names = r.class_names
    predicted = int(probs.argmax())
    top = probs.topk(min(cfg.topk, len(names)))
    result.update({
        "true": names[true] if true is not None else None,
        "predicted": names[predicted],
        "correct": (true == predicted) if true is not None else None,
        "topk": [{"class": names[int(i)], "probability": float(p)} for p, i in zip(top.values, top.indices,
                                                                                    strict=True)],
    })
    out_dir = ensure_dir(cfg.out_path or default_out_dir or r.path.parent / PREDICTIONS)
    figure = plot_prediction(image, probs, names, predicted, true, out_dir / picture, caption=caption)
    result["figure"] = str(figure)
    print(json.dumps(_json_safe(result), allow_nan=False) if cfg.format == "json" else _as_text(result))
    return result


def _json_safe(value: Any) -> Any:
    """NaN and inf (a diverged model's probabilities) as null: JSON has no NaN, and parsers reject it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _safe_stem(stem: str) -> str:
    """A file name's stem as part of another file name: letters, digits, '-', '_' and '.', at most 64."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:64] or "image"


def _pick_index(index: int | None, seed: int | None, n: int, split: str) -> int:
    if index is None:
        return random.Random(seed).randrange(n)
    if not index < n:
        raise UserError(f"index={index!r} is out of range: the {split} set has images 0..{n - 1}")
    return index


def _as_text(result: dict[str, Any]) -> str:
    where = f"image {result['image']}" if "image" in result else f"{result['split']} image #{result['index']}"
    head = f"{where}: predicted {result['predicted']}"
    if result["true"] is not None:
        head += f", true {result['true']} ({'right' if result['correct'] else 'wrong'})"
    top = result["topk"]
    rank, name = len(str(len(top))), max(len(t["class"]) for t in top)  # columns aligned at topk=10, long names
    rows = [f"  {i:>{rank}}. {t['class']:<{name}}  {t['probability']:7.2%}" for i, t in enumerate(top, 1)]
    return "\n".join([head, *rows, f"figure: {result['figure']}"])
