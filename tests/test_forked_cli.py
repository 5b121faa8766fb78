"""The tests' forked commands (forked_cli.py) end as the same command in a fresh process does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import forked_cli
import pytest
from helpers import console_script

SCRIPTS = {
    "exit code": "import sys; print('out'); sys.exit(3)",
    "exit message": "import sys; sys.exit('a message')",
    "exception": "raise ValueError('boom')",
    "ctrl-c": "raise KeyboardInterrupt",
    "atexit": "import atexit; atexit.register(print, 'at exit')",
    "executor": "import concurrent.futures as f; f.ThreadPoolExecutor(1).submit(print, 'from a worker thread')",
    "process": "import os, sys; print(os.getcwd(), sys.argv[1:], os.environ.get('FMNIST_X'),"
               " os.environ.get('ONLY_HERE'), sys.path[0] == os.path.dirname(os.path.abspath(sys.argv[0])),"
               " sys.stdin.read() == '')",
}

pytestmark = pytest.mark.skipif(not forked_cli.enabled(), reason="forked commands are off (FMNIST_TEST_FORK=0)")


def both(argv: list[str], cwd: Path, env: dict[str, str], interpreter: tuple[str, ...] = ()
         ) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """The command in a fresh process (`interpreter` first, for a script that is not executable) and forked."""
    fresh = subprocess.run([*interpreter, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return fresh, forked_cli.run(argv, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_forked_script_ends_as_a_fresh_one(name: str, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPTS[name] + "\n")
    env = {**os.environ, "FMNIST_X": "set for this command"}
    env.pop("ONLY_HERE", None)
    fresh, forked = both([str(script), "a b", "c"], cwd=tmp_path, env=env, interpreter=(sys.executable,))
    assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout)
    assert forked.stderr.strip().splitlines()[-1:] == fresh.stderr.strip().splitlines()[-1:]
    assert ("Traceback" in forked.stderr) == ("Traceback" in fresh.stderr)


@pytest.mark.parametrize("args", [("--help",), ("batch_size=0",), ("model=cnnn",)])
def test_a_forked_cli_answers_as_a_fresh_one(args: tuple[str, ...], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    fresh, forked = both([console_script("fmnist-train"), *args], cwd=tmp_path, env=env)
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert not any(tmp_path.iterdir())
