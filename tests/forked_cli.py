"""Run a console script as subprocess.run would, but without paying for Python and torch to start each time.

A CLI test spends most of its time starting Python and importing torch, torchvision and matplotlib (6-10 s a
command on the 2-core development machines, where the work on the tiny test data takes well under a second).
One server per pytest worker (cli_server.py) pays that once and forks for each command; the child runs the
console script file as Python would, with the command's arguments, working directory, environment, stdin
(/dev/null), stdout and stderr (files read back as text, as capture_output=True, text=True would) and exit status.

What a fork cannot give is what happens while a process starts: libraries read some variables once, when they
load (OpenMP's OMP_WAIT_POLICY, CUDA_VISIBLE_DEVICES), and imports could print. So the server loads them with the
test session's environment, with OpenMP's threads sleeping while they wait (OMP_WAIT_POLICY=PASSIVE: several
forked commands share the CPU, as several processes would, and fmnist-train sets that policy itself where it
fixes the thread count; a policy changes speed, not results), and a server whose imports print anything fails
the test that started it. Tests of start-up itself (what --help imports) and of signals start their own
processes. FMNIST_TEST_FORK=0 runs every command in a fresh process instead.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

SERVER = Path(__file__).with_name("cli_server.py")


def enabled() -> bool:
    """Linux only: on macOS a fork that is not followed by exec is unsafe (why multiprocessing spawns there)."""
    return sys.platform == "linux" and os.environ.get("FMNIST_TEST_FORK", "1") != "0"


class ForkServer:
    """One cli_server.py process and the pipe to it."""

    def __init__(self) -> None:
        log, self.log = tempfile.mkstemp(prefix="fmnist-cli-server-", suffix=".log")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log, env=env)
        os.close(log)
        self.pending = b""
        ready = self.line(timeout=300)
        printed = Path(self.log).read_text(errors="replace")
        if ready != "ready" or printed:
            self.close()
            raise AssertionError(f"the CLI fork server did not start cleanly: {ready!r}\n{printed}")

    def line(self, timeout: float | None) -> str | None:
        """The next reply line; None when the server has closed its stdout or timeout seconds passed."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self.pending:
                if not selector.select(timeout):
                    return None
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    return None
                self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode()

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory(prefix="fmnist-cli-") as tmp:
            out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
            request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            started = self.line(timeout=60)
            if started is None or not started.startswith("started "):
                raise AssertionError(f"the CLI fork server stopped: {started!r}")
            exited = self.line(timeout)
            if exited is None:
                os.kill(int(started.split()[1]), signal.SIGKILL)
                self.line(timeout=60)
                raise subprocess.TimeoutExpired(argv, timeout, _text(out), _text(err))
            status = int(exited.split()[1])
            return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), _text(out), _text(err))

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        os.unlink(self.log)


def _text(path: Path) -> str:
    """What subprocess.run(text=True) would have decoded (universal newlines included)."""
    return path.read_text() if path.exists() else ""


_server: ForkServer | None = None


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout), forked."""
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = ForkServer()
        atexit.register(_server.close)
    return _server.run(argv, cwd, env, timeout)
