"""report.html: what it holds for a completed, failed and interrupted run, and how it behaves in a real
browser (headless Chromium): it draws, logs no error, asks the network for nothing, and shows a hostile
config value as text instead of running it."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import FAST, cli
from PIL import Image

from fmnist.artifacts.html import _script, run_page

HOSTILE = "<script>window.pwned = 1</script>"
TINY = ("model=mlp", "model.hidden=[32]", "dataset=fashion", *FAST)


def test_every_value_is_escaped_and_only_the_page_s_own_script_may_run(tmp_path: Path):
    page = run_page({"status": "failed", "error": HOSTILE, "history": []}, tmp_path, name=HOSTILE,
                    config={"note": HOSTILE}, command=f"fmnist-train +note='{HOSTILE}'")
    assert "<script>window" not in page and "&lt;script&gt;window.pwned" in page
    script, digest = _script()
    assert page.count("<script>") == 1 and f"<script>{script}</script>" in page
    assert f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src '{digest}'" in page


def test_a_run_page_has_the_command_config_epochs_classes_and_figures(tmp_path: Path):
    cli("fmnist-train", *TINY, "hydra.run.dir=run", cwd=tmp_path)
    page = (tmp_path / "run" / "report.html").read_text()
    assert 'class="status completed"' in page and "fmnist-train model=mlp" in page
    assert "T-shirt/top" in page and "Ankle boot" in page  # the per-class table
    assert page.count('class="best"') == 1  # the best epoch's row
    assert page.count("data:image/png;base64,") == 3  # curves, confusion matrix, most confident mistakes
    assert "dataset:\n  name: fashion" in page and "optimizer:\n  _target_: torch.optim.Adam" in page  # as YAML
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert f'">{history[0]["samples_per_s"]:,.0f}</td>' in page  # samples/s as the log says it (23,058, not 23058)


def test_a_failed_run_gets_a_page_saying_why(tmp_path: Path):
    proc = cli("fmnist-train", *TINY, "optimizer=sgd", "optimizer.lr=1e12", "hydra.run.dir=run", cwd=tmp_path,
               check=False)
    assert proc.returncode == 2
    page = (tmp_path / "run" / "report.html").read_text()
    assert 'class="status failed"' in page and "NaN/inf" in page


# ---- in a real browser -----------------------------------------------------------------------------------


def _chromium() -> str | None:
    """Debian's chromium: found, or installed where the tests may (root with apt-get), else None."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], capture_output=True,
                   timeout=900, check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install .[test])")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium here and it cannot be installed (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        # Closed network: Chromium's own background connections are switched off, as a user's would fail.
        launched = p.chromium.launch(executable_path=executable, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield launched
        launched.close()


def _open(browser: object, page_file: Path) -> tuple[object, list[str], list[str]]:
    """The page loaded, with the console errors and the network requests it made."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_file.as_uri())
    page.wait_for_load_state("load")
    return page, errors, requests


def _not_blank(png: bytes) -> None:
    with Image.open(io.BytesIO(png)) as img:
        low, high = img.convert("L").getextrema()
        assert img.size[0] >= 1000 and high - low > 100, "the screenshot is blank"


def test_the_run_page_in_chromium(browser: object, tmp_path: Path):
    cli("fmnist-train", *TINY, f"+note='{HOSTILE}'", "hydra.run.dir=run", cwd=tmp_path)
    page, errors, requests = _open(browser, tmp_path / "run" / "report.html")
    _not_blank(page.screenshot(full_page=True))
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []  # nothing from the network
    assert page.evaluate("window.pwned") is None  # the value did not run
    assert HOSTILE in page.inner_text("body")  # it is shown, as text
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    # the one script that does run: sorting the epoch table by validation accuracy
    table = page.locator("table.sortable").first
    table.locator("th", has_text="epoch").first.click()
    table.locator("th", has_text="epoch").first.click()
    assert table.locator("tbody tr td").first.inner_text() == "2"  # descending: epoch 2 first
    page.close()


def test_the_sweep_page_in_chromium_links_every_job(browser: object, tmp_path: Path):
    cli("fmnist-train", "--multirun", *TINY, "optimizer.lr=1e-3,1e12", "optimizer=sgd", "hydra.sweep.dir=sweep",
        cwd=tmp_path, check=False)
    page, errors, requests = _open(browser, tmp_path / "sweep" / "report.html")
    _not_blank(page.screenshot(full_page=True))
    assert errors == [] and [u for u in requests if not u.startswith(("file:", "data:"))] == []
    text = page.inner_text("body")
    assert "completed" in text and "failed" in text and "optimizer.lr=1e12" in text.replace("1000000000000.0", "1e12")
    links = page.locator("table.sortable a")
    assert links.count() == 2
    links.first.click()
    page.wait_for_load_state("load")
    assert page.url.endswith("/0/report.html") or page.url.endswith("/1/report.html")
    page.close()
