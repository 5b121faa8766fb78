"""report.html: one self-contained page per run, per evaluation and per sweep.

A page is a file to send to someone: the figures are embedded (data: URIs), the only script is inline and
the page's Content-Security-Policy allows that script alone (by its hash) and no network at all. Every
value comes from files that may hold anything (a config value, a class name, an error message), so the
templates escape everything they print (Jinja2's autoescape).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

import fmnist

TEMPLATES = Path(__file__).with_name("templates")
MAX_IMAGE_BYTES = 20 << 20  # a figure bigger than this is not ours: left out of the page


@cache
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["j2", "html"]),
                       trim_blocks=True, lstrip_blocks=True)


@cache
def _script() -> tuple[Markup, str]:
    """The inline script (table sorting) and its CSP hash: no other script can run in the page."""
    text = (TEMPLATES / "sort.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    return Markup(text), f"sha256-{digest}"


def _render(template: str, **values: Any) -> str:
    script, script_hash = _script()
    return _environment().get_template(template).render(
        script=script, script_hash=script_hash, version=fmnist.__version__,
        written=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"), **values)


def embed(path: Path) -> str | None:
    """A PNG as a data: URI (None when there is none, or it is no PNG of a sane size)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_IMAGE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode()


def run_page(metrics: dict[str, Any], run_dir: Path, *, name: str, config: dict[str, Any], command: str) -> str:
    """A training run as it stands (completed, failed, interrupted, running): from its metrics.json and the
    figures in its directory."""
    from fmnist.artifacts.rundir import CONFUSION, CURVES, MISCLASSIFIED  # the directory's names

    history = [r for r in metrics.get("history", []) if isinstance(r, dict)]
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    return _render(
        "run.html.j2", title=f"{name}: {metrics.get('status', 'unknown')}", name=name, run_dir=str(run_dir),
        status=str(metrics.get("status", "unknown")), error=metrics.get("error"), test=test,
        best_val_acc=metrics.get("best_val_acc"), best_epoch=metrics.get("best_epoch"), epochs=config.get("epochs"),
        seconds=metrics.get("seconds"), train_seconds=sum(r.get("seconds") or 0 for r in history),
        device=metrics.get("device"), precision=metrics.get("precision"),
        history=history, command=command,
        config_yaml=yaml.safe_dump(config, sort_keys=False, allow_unicode=True) if config else "(not recorded)",
        images={"curves": embed(run_dir / CURVES), "confusion": embed(run_dir / CONFUSION),
                "misclassified": embed(run_dir / MISCLASSIFIED)})


def eval_page(summary: dict[str, Any], out_dir: Path, *, name: str, command: str) -> str:
    """fmnist-eval's page for the split it evaluated, linking back to the training run's page."""
    from fmnist.artifacts.rundir import CONFUSION, MISCLASSIFIED, PER_CLASS, REPORT

    run_report = Path(summary["checkpoint"]).parent / REPORT
    run_link = None
    if run_report.is_file():
        try:
            run_link = "../" + run_report.resolve().relative_to(out_dir.resolve().parent).as_posix()
        except ValueError:
            run_link = run_report.resolve().as_uri()
    return _render(
        "eval.html.j2", title=f"{name}: {summary['split']} split", name=name, command=command,
        checkpoint=summary["checkpoint"], split=summary["split"], tta=summary.get("tta"),
        accuracy=summary["accuracy"], macro_f1=summary["macro_f1"], loss=summary["loss"], samples=summary["samples"],
        recorded=summary.get("recorded_test_accuracy") if summary["split"] == "test" else None,
        classes=summary["classes"], device=summary.get("device"), precision=summary.get("precision"), run_page=run_link,
        images={"per_class": embed(out_dir / PER_CLASS), "confusion": embed(out_dir / CONFUSION),
                "misclassified": embed(out_dir / MISCLASSIFIED)})


def sweep_page(rows: list[dict[str, Any]], sweep_dir: Path, *, common: list[str], failed: int, plot: Path) -> str:
    """Every job of a sweep: the sortable summary (rows best first, `failed` of them failed), each job's status
    and page, the best job's curves and the sweep's `plot`."""
    from fmnist.artifacts.rundir import CURVES, REPORT

    jobs = [{**r, "page": f"{r['job']}/{REPORT}" if (sweep_dir / r["job"] / REPORT).is_file() else None}
            for r in rows]
    done = [r for r in jobs if r["status"] == "completed" and isinstance(r["best_val_acc"], int | float)]
    best = done[0] if done else None  # rows come best first
    return _render(
        "sweep.html.j2", title=f"sweep {sweep_dir.name}", sweep_name=sweep_dir.name, sweep_dir=str(sweep_dir),
        rows=jobs, common=common, best=best, completed=sum(r["status"] == "completed" for r in jobs), failed=failed,
        images={"best_curves": embed(sweep_dir / best["job"] / CURVES) if best else None, "sweep": embed(plot)})
