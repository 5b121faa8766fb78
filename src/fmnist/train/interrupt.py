"""Ctrl-C and SIGTERM as requests: finish the current step, save, say how to resume, exit non-zero."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType

from fmnist.artifacts.sweep import ask_to_stop, signal_in, stop_file

log = logging.getLogger("fmnist")

SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the requests to stop


class StopRequest:
    """While active, the first SIGINT/SIGTERM only sets a flag; a second one ends the process at once.

    A job of a parallel sweep is also asked through `stop_file`, which the sweep's own process writes when
    it gets the signal (artifacts/sweep.py: its workers leave Ctrl-C to it). Checked at most every 0.1 s.
    """

    FILE_CHECK_SECONDS = 0.1

    def __init__(self, stop_file: Path | None = None) -> None:
        self.signum: int | None = None
        self.stop_file = stop_file
        self._checked = 0.0
        self._previous: dict[int, object] = {}

    def __bool__(self) -> bool:
        if self.signum is None and self.stop_file is not None and \
                time.monotonic() - self._checked >= self.FILE_CHECK_SECONDS:
            self._checked = time.monotonic()
            if self.stop_file.exists():
                self.signum = signal_in(self.stop_file)
                log.warning("%s to the sweep: finishing the current step, then saving last.pt", self.name)
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        _quit_on_next_signal()
        log.warning("%s: finishing the current step, then saving last.pt (send it again to quit at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers only exist in the main thread
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def _quit_on_next_signal() -> None:
    """A second SIGINT/SIGTERM gets the default behaviour: exit now."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class ParallelStop:
    """SIGINT/SIGTERM to a sweep whose jobs run in worker processes (the joblib launcher), handled in the
    sweep's own process: the first one writes the stop file, which running jobs read within 0.1 s and then
    stop as a single run does (finish the step, save last.pt, record "interrupted"), and jobs yet to start
    skip (artifacts/sweep.py run_job); the sweep collects them all and ends with its summary (`exit_code`).
    Without it joblib ends on the KeyboardInterrupt at once, with a traceback, killing its workers mid-save.
    A second signal quits at once.
    """

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir = sweep_dir
        self.signum: int | None = None
        stop_file(sweep_dir).unlink(missing_ok=True)  # an earlier sweep's, in a sweep directory used again
        for sig in SIGNALS:
            signal.signal(sig, self._handle)
        _workers_start_deaf_to_ctrl_c()

    @property
    def exit_code(self) -> int | None:
        return 128 + self.signum if self.signum is not None else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        _quit_on_next_signal()
        name = signal.Signals(signum).name
        try:
            ask_to_stop(self.sweep_dir, signum)
        except OSError as exc:  # a full disk: the jobs cannot be told; say so rather than raise mid-frame
            log.error("%s: cannot write %s (%s): the jobs go on; send it again to quit at once", name,
                      stop_file(self.sweep_dir), exc.strerror or exc)
            return
        log.warning("%s: stopping the sweep: running jobs save last.pt, jobs not started yet are skipped "
                    "(send it again to quit at once)", name)


def _workers_start_deaf_to_ctrl_c() -> None:
    """Start the sweep's worker processes with SIGINT ignored: a signal ignored across exec stays ignored in the
    new Python, which then never turns a Ctrl-C into KeyboardInterrupt. Ctrl-C in a terminal reaches every
    process of the sweep; a worker still importing (its first seconds, before its job ignores SIGINT itself)
    died of it with a traceback, and joblib then ended the sweep with another (TerminatedWorkerError). This
    process tells the jobs to stop through the stop file instead. loky starts workers through its `fork_exec`,
    looked up at each start, so that is where the disposition is set around the fork; a Ctrl-C inside that
    sub-millisecond window is ignored and can be sent again. Only from the main thread (where Python allows
    it): loky's rare restarts of a worker from its own thread start it as before."""
    try:
        from joblib.externals.loky.backend import fork_exec as module
    except ImportError:  # another joblib: workers start as before
        return
    start = module.fork_exec
    if getattr(start, "deaf_to_ctrl_c", False) or signal.getsignal(signal.SIGINT) is None:
        return

    def fork_exec(*args: object, **kwargs: object) -> int:
        if threading.current_thread() is not threading.main_thread():
            return start(*args, **kwargs)
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return start(*args, **kwargs)
        finally:
            signal.signal(signal.SIGINT, handler)

    fork_exec.deaf_to_ctrl_c = True  # type: ignore[attr-defined]
    module.fork_exec = fork_exec
