"""The configs travel inside the wheel, and the installed package finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"could not build a wheel here (no build backend reachable?): {proc.stderr.strip()[-300:]}")
    return next(out.glob("fmnist-*.whl"))


def test_wheel_ships_every_config(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for conf in sorted((ROOT / "conf").rglob("*.yaml")):
        assert f"fmnist/conf/{conf.relative_to(ROOT / 'conf')}" in names
    templates = ROOT / "src" / "fmnist" / "artifacts" / "templates"
    for template in sorted(templates.iterdir()):  # the report pages are rendered from these
        assert f"fmnist/artifacts/templates/{template.name}" in names


def test_installed_wheel_finds_its_configs(wheel: Path, tmp_path: Path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import fmnist.config as c, sys; print(c.config_dir()); print(c.__file__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == str(site / "fmnist" / "conf") and out[1].startswith(str(site))
    help_text = subprocess.run([sys.executable, "-m", "fmnist.cli.train", "--help"], env=env, cwd=tmp_path,
                               capture_output=True, text=True, check=True).stdout
    assert "model: bn_cnn, bn_cnn_wide, cnn, feedforward, mlp" in help_text
