"""The fork server behind tests/helpers.py's `cli()`: imports what the console scripts import, then forks once
per command.

Protocol, one line each way on stdin/stdout: "ready" once the imports are done; then for each request (a JSON
object: argv, cwd, env, stdout, stderr: the script, its arguments, and the files its output goes to) the reply
"started PID" and, when that child has exited, "exited STATUS" (os.waitpid's status). The child runs the console
script file with runpy, as `python SCRIPT ARGS` would, and ends as the interpreter would (exit status, message,
traceback, the signal of an uncaught Ctrl-C, threads wound up, atexit) but without tearing its modules down.
test_forked_cli.py compares those endings with a fresh process's.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import pkgutil
import runpy
import signal
import sys
import traceback
from typing import Any

from fmnist.cli.common import exit_without_teardown


def preload() -> None:
    """Everything the entry points import lazily: torch (with the torch._dynamo a first optimizer step loads),
    torchvision, matplotlib, every fmnist module."""
    import torch._dynamo  # noqa: F401
    import torchvision  # noqa: F401

    import fmnist

    for module in pkgutil.walk_packages(fmnist.__path__, "fmnist."):
        importlib.import_module(module.name)


def serve() -> dict[str, Any]:
    """Answer requests until stdin closes (then exit); in a forked child, return its request."""
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        print(f"started {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exited {status}", flush=True)
    sys.exit(0)


def become(request: dict[str, Any]) -> None:
    """The child's process state as a fresh `SCRIPT ARGS` started by subprocess would have it."""
    for fd, (path, flags) in enumerate([(os.devnull, os.O_RDONLY),
                                        (request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                        (request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)]):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # the script's directory, as `python SCRIPT` has it


def run_script(path: str) -> int:
    """The script's exit status as the interpreter would make it from how the script ended (-N: signal N)."""
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return -signal.SIGINT  # Python ends by the signal then, so that its parent sees it
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    preload()

    gc.freeze()  # the imported objects stay out of every later collection: forked children copy fewer pages
    job = serve()
    become(job)
    exit_without_teardown(run_script(job["argv"][0]))
