"""What every entry point shares: a Hydra app whose every user mistake is one line with exit code 2, found
before anything is created or imported that the mistake does not need.

Hydra reports its own errors (an unknown group option, a mistyped key, an unparsable override, a run
directory it cannot create) as ten lines and exit code 1. The entry points ask Hydra to raise them instead
(HYDRA_FULL_ERROR) and word them (overrides.py), with the valid choices and the closest match. A single run's config
is composed and validated before Hydra starts the run, so a rejected config leaves no run directory; and
this module imports neither torch nor matplotlib, so `--help`, `--cfg job` and a config error answer at once.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import logging
import multiprocessing.util
import os
import platform
import re
import signal
import string
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import hydra
from hydra._internal.hydra import Hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig, OmegaConf, open_dict

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

from fmnist import __version__
from fmnist.artifacts.atomic import check_dir_target, in_the_way
from fmnist.artifacts.inputs import check_checkpoint_file, checkpoint_path, existing_file
from fmnist.artifacts.rundir import check_some_checkpoint
from fmnist.cli.callbacks import discard_rejected_sweep
from fmnist.cli.overrides import (
    add_config_dir,
    app_groups,
    composition_error,
    empty_sweep_error,
    group_options,
    group_value_error,
    launcher_error,
    missing_option_error,
    other_apps_groups,
    override_parts,
    sampled_sweep_error,
    sweep_resume_error,
    unparsable_error,
)
from fmnist.config import CONFIG_DIR, InspectConfig, PredictConfig
from fmnist.errors import UserError
from fmnist.paths import quoted_override, user_path

T = TypeVar("T")


def report_user_errors(prog: str, body: Callable[[], T]) -> T:
    """Run body; a UserError becomes `prog: error: ...` on stderr and its exit code (2; 128+N for a signal)."""
    try:
        return body()
    except UserError as exc:
        fail(prog, str(exc), getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        fail(prog, "interrupted", 130)


def fail(prog: str, message: str, code: int = 2) -> Any:
    """End with `line` as the last word, on stderr and in the run's log files. Nothing logs after it: an exit
    handler's record (torch's FakeTensor cache statistics, where a Ctrl-C came while torch._dynamo loaded)
    would otherwise follow the one line."""
    line = f"{prog}: {'error: ' if code == 2 else ''}{' '.join(message.split())}"
    end_log_files(line)
    logging.shutdown()
    logging.disable(logging.CRITICAL)
    print(line, file=sys.stderr)
    sys.exit(code)


def end_log_files(line: str) -> None:
    """`line` (the error that ends a run) as the last line of the run's log files (train.log), which would
    otherwise stop at the run's last news with no word of why; the console has it once, on stderr. A file
    that cannot take it (a full disk) is left as it is, without logging's traceback about it."""
    record = logging.LogRecord("fmnist", logging.ERROR, __file__, 0, line, None, None)
    logging.raiseExceptions = False  # the process ends next: nothing else logs after this
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def exit_without_teardown(status: int) -> NoReturn:
    """End the process as the interpreter would, less its module-by-module teardown, which takes 1.2-1.5 s in a
    process holding torch (2-core Xeon): every command paid that after its last line. Threads are wound up and
    waited for, atexit runs (logging's handlers, multiprocessing's children, trackers, weakref finalizers), the
    standard streams are flushed; objects left to the teardown are not finalised, so a file left open would lose
    its buffered tail (fmnist writes each file whole and closes it). A negative status ends by that signal; a
    stream whose reader has gone (`| head`) ends the process with 120, as the interpreter's last flush would."""
    threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter does first: executors, then joins
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe, or a stream closed already
            status = status or 120
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status)


def end_worker_without_teardown() -> None:
    """In a worker process of a parallel sweep: when the sweep sends the worker home, end it as the entry points
    end (exit_without_teardown), once multiprocessing's own exit steps have run (the finalizers that flush its
    queues to the sweep's process come first: this one has the lowest priority). The sweep's process waits for
    its workers before it exits, so their teardown of torch (~1.5 s) was every parallel sweep's last wait. A
    worker ending on an error keeps the interpreter's own ending, and its exit code."""
    global _worker_ending
    if _worker_ending is None:  # once per worker, however many jobs it runs
        _worker_ending = multiprocessing.util.Finalize(None, _end_worker, exitpriority=-1000)


_worker_ending: multiprocessing.util.Finalize | None = None


def _end_worker() -> None:
    if sys.exc_info()[0] is None:  # the worker's loop returned: it was asked to end
        exit_without_teardown(0)


def check_inputs(settings: InspectConfig) -> InspectConfig:
    """The files an fmnist-eval or fmnist-predict run names, checked as far as they can be without torch: a
    missing or broken checkpoint (or no trained model at all without ckpt=), a missing image or a file where
    out_dir should be is one line at once, not after torch's import (about 5 s on a 2-core CPU) or, for
    out_dir, after the whole evaluation."""
    if settings.ckpt:
        check_checkpoint_file(checkpoint_path(settings.ckpt))
    else:
        check_some_checkpoint()  # "no trained model found" at once; restore() chooses among the runs found
    if isinstance(settings, PredictConfig) and settings.image is not None:
        existing_file(settings.image, "image", if_directory=": name one picture, or several with --multirun "
                                                           "(fmnist-predict -m image=A.png,B.png)")
    if settings.out_path:
        check_dir_target(settings.out_path)
    return settings


def hydra_app(prog: str, config_name: str, check: Callable[[DictConfig], Any],
              check_job: Callable[[DictConfig], Any] | None = None,
              before_run: Callable[[], None] | None = None,
              sleeping_threads: Callable[[list[str]], bool] = lambda overrides: True,
              place: Callable[[Any, list[str]], list[str]] | None = None,
              ) -> Callable[[Callable[[Any], Any]], Callable[[], None]]:
    """Decorator: the console-script `main()` of a Hydra task function, with Hydra's errors in one line and
    a single run's config checked by `check` (config.py's validation) before the run starts, and a sweep's
    jobs' configs by `check_job` (the validation alone: no data or device is looked for) before it starts; `before_run`
    then runs before Hydra resolves the run directory (fmnist-train joins a distributed run's ranks there).
    `sleeping_threads(overrides)`: whether OpenMP's threads should sleep instead of spin while they wait.
    `place(settings, overrides)`: given what `check` returned and the command line's overrides, refuse the
    run (UserError) or return overrides that tell Hydra where to write its log and `.hydra/`, before Hydra
    writes either."""

    def wrap(task: Callable[[Any], Any]) -> Callable[[], None]:
        app = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(task)

        def main() -> None:
            try:
                run()
            except SystemExit as exc:
                if not (exc.code is None or isinstance(exc.code, int)) or "torch" not in sys.modules:
                    raise
                exit_without_teardown(exc.code or 0)
            if "torch" in sys.modules:  # the work is done: skip torch's teardown
                exit_without_teardown(0)

        def run() -> None:
            os.environ["HYDRA_FULL_ERROR"] = "1"  # raise composition errors to us instead of printing them
            try:
                args = _parser(prog).parse_args()
                if sleeping_threads(args.overrides):
                    # OpenMP threads that sleep when idle instead of spinning: several torch processes on one
                    # CPU (parallel sweep jobs, a busy laptop) otherwise starve each other. Read when torch loads.
                    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
                if args.help and not (args.config_path or args.config_name or args.config_dir):
                    print(_app_help(config_name, args.overrides, args.resolve, args.multirun))
                    return
                if args.shell_completion and any(o.startswith("query=") for o in args.overrides):
                    print(_own_completions(_captured_stdout(app), config_name))
                    return
                if args.config_dir and Path(args.config_dir).is_dir():
                    add_config_dir(args.config_dir)
                _TYPED[:] = sys.argv[1:]
                args.overrides += _added(_home_dirs(args.overrides), args.overrides)  # what the checks read too
                named = args.config_name  # another command's config: every error would be worded for this one's
                if (named and named != config_name and not args.config_dir
                        and (Path(CONFIG_DIR) / f"{named}.yaml").is_file()):
                    fail(prog, f"--config-name={named} is fmnist-{named}'s config: run fmnist-{named}, or leave "
                               f"--config-name out")
                if error := group_value_error(prog, config_name, args.overrides):
                    fail(prog, error)
                if args.multirun and (error := sweep_resume_error(args.overrides)):
                    fail(prog, error)
                checked = _check_single_run(prog, config_name, check, args)
                if check_job is not None:
                    _check_sweep(prog, config_name, check_job, args)
                if place is not None and checked is not None:
                    try:
                        added = place(checked[0], args.overrides)
                    except UserError as exc:
                        fail(prog, str(exc))
                    _added(added, args.overrides)
                if args.multirun and (error := launcher_error(args.overrides)):
                    fail(prog, error)
                if before_run is not None:
                    before_run()
                app()
            except MissingConfigException as exc:
                discard_rejected_sweep()
                fail(prog, missing_option_error(exc))
            except ConfigCompositionException as exc:
                discard_rejected_sweep()
                fail(prog, composition_error(exc, prog, config_name, args.overrides))
            except OverrideParseException as exc:
                fail(prog, unparsable_error(args.overrides) or
                     f"cannot parse the overrides ({str(exc).splitlines()[0]}); write them as key=value")
            except HydraException as exc:
                fail(prog, sampled_sweep_error(args.overrides) or (str(exc).splitlines()[0] if str(exc) else
                                                              type(exc).__name__))
            except ValueError as exc:
                if not str(exc).startswith("Only one of --run"):  # Hydra's word for conflicting flags
                    raise
                fail(prog, str(exc))
            except (FileExistsError, NotADirectoryError) as exc:  # Hydra's mkdir of the run directory
                fail(prog, str(in_the_way(Path(exc.filename or "hydra.run.dir"))))
            except OSError as exc:  # e.g. a hydra.run.dir that cannot be created
                where = f"{exc.filename}: " if exc.filename else ""
                fail(prog, f"{where}{exc.strerror or exc}")
            except KeyboardInterrupt:  # a second Ctrl-C to a sweep: quit at once, still in one line
                fail(prog, "interrupted", 130)

        main.__doc__ = task.__doc__
        return main

    return wrap


def _parser(prog: str) -> argparse.ArgumentParser:
    """Hydra's command-line parser, whose --version answered "Hydra 1.3.8" for fmnist-train: fmnist's version
    first, then what it runs on (read from the installed packages: importing torch takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} not installed"

    parser = get_args_parser()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the version's lines as written, not rewrapped
    for action in parser._actions:  # argparse keeps its actions only here
        if isinstance(action, argparse._VersionAction):
            action.version = (f"{prog} {__version__}\n{installed('torch')}, {installed('torchvision')}, Hydra "
                              f"{hydra.__version__}, Python {platform.python_version()}")
            action.help = "Show fmnist's version and exit"
    return parser


def _app_help(config_name: str, overrides: list[str], resolve: bool, multirun: bool) -> str:
    """The text of Hydra's --help (the app's hydra.help template, its groups, the composed config), made here.

    Hydra fills the template by listing the options of every config group twice, its own launchers,
    sweepers and loggers included, each listing a deep copy of the whole config repository: 1.4-1.8 s on a
    2-core CPU for a template that shows only the app's groups. Those are the folders of conf/ (plugins add
    groups under hydra/ only), so reading them and composing once gives the same text in a third of the time.
    Only the groups the app's own config chooses from are listed: conf/ also holds the training groups, which
    fmnist-eval and fmnist-predict take from the checkpoint. With --multirun, the config is its first job's.
    """
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        if multirun:
            with contextlib.suppress(HydraException):  # a search's interval() has no first value: Hydra says so
                overrides = [each[0] for _, each in _job_values(overrides) if each]
        cfg = hydra.compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # for ${hydra:...} in the config when --resolve is given
    template = cfg.hydra.help.template
    with open_dict(cfg):
        del cfg["hydra"]
    groups = "".join(f"{name}: {', '.join(group_options(name))}\n"
                     for name in sorted(app_groups(config_name)))
    return string.Template(template).substitute(
        FLAGS_HELP=Hydra.format_args_help(get_args_parser()), HYDRA_CONFIG_GROUPS="", APP_CONFIG_GROUPS=groups,
        CONFIG=OmegaConf.to_yaml(cfg, resolve=resolve))


def _captured_stdout(app: Callable[[], None]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        app()
    return out.getvalue()


def _own_completions(words: str, config_name: str) -> str:
    """Hydra's tab completions without the groups of the other entry points: its completion offers every folder
    of the config directory, which the three commands share, so fmnist-eval offered model= and optimizer=, which
    it takes from the checkpoint. Keys (dataset.root) stay; bash's words are one line, fish's one per line."""
    foreign = other_apps_groups(config_name)

    def own(word: str) -> bool:
        group = re.match(r"[+~]?([\w-]+)[=/]", word)
        return not (group and group.group(1) in foreign)

    lines = (" ".join(w for w in line.split(" ") if own(w)) for line in words.rstrip("\n").split("\n"))
    return "\n".join(line for line in lines if line)


def _search_path(args: Any) -> list[str] | None:
    """The override that adds `--config-dir`'s options, searched after fmnist's as Hydra does ([] without one);
    None where composing here is left to Hydra (its own words for a missing folder; a search path of both kinds
    is Hydra's to merge), or where the command composes another config (--config-path, --config-name, a rerun)."""
    if args.config_path or args.config_name or args.experimental_rerun:
        return None
    if not args.config_dir:
        return []
    if not Path(args.config_dir).is_dir() or any(o.startswith("hydra.searchpath") for o in args.overrides):
        return None
    return [f"hydra.searchpath=[file://{Path(args.config_dir).absolute()}]"]


def _only_shows(args: Any) -> bool:
    """A command that shows something (help, the config, completions) and runs nothing: nothing to check. (With
    --config-dir, fmnist-train --help went on to look for the data, and tried to download it.)"""
    return bool(args.help or args.hydra_help or args.cfg or args.info or args.shell_completion)


def _check_single_run(prog: str, config_name: str, check: Callable[[DictConfig], Any], args: Any
                      ) -> tuple[Any] | None:
    """Compose and validate the config of a plain run the way Hydra will, so that a rejected one is one line
    and leaves nothing behind (Hydra creates the run directory before the task sees the config). Returns what
    `check` returned, or None where nothing was checked: sweeps (_check_sweep), --cfg and the like go to Hydra
    as they are (and --help, which main() answers for fmnist's own config and Hydra for another)."""
    search = _search_path(args)
    if args.multirun or _only_shows(args) or search is None:
        return None
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra.compose(config_name=config_name, overrides=[*args.overrides, *search])
    try:
        return (check(cfg),)
    except UserError as exc:
        fail(prog, str(exc))


def _check_sweep(prog: str, config_name: str, check_job: Callable[[DictConfig], Any], args: Any) -> None:
    """A --multirun's jobs, checked as a single run's config is before the sweep starts: a value no job can run
    with (batch_size=0, optimizer.lr=1e-3,-1) would otherwise fail each job it is in as that job starts, after the
    sweep's folder and the other jobs. Each value of each swept key is checked once, in a job of the sweep (the
    first job, with that value in it): as many composes as values, not as jobs. A combination that only some
    jobs refuse is still each job's own failure. Sweeps that Optuna samples are left to their trials."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    search = _search_path(args)
    if not args.multirun or _only_shows(args) or search is None:
        return
    if any(o.get_key_element().lstrip("+~") in ("hparams_search", "hydra/sweeper") or
           (o.is_sweep_override() and not o.is_discrete_sweep())
           for o in OverridesParser.create().parse_overrides(args.overrides)):
        return
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        jobs_of = _job_values(args.overrides, args.config_dir)
        for override, each in jobs_of:
            if not each:
                fail(prog, empty_sweep_error(str(override.input_line), override.get_key_element(), config_name))
        values = [each for _, each in jobs_of]
        first = [each[0] for each in values]
        jobs = [first] + [[*first[:i], value, *first[i + 1:]] for i, each in enumerate(values) for value in each[1:]]
        swept = [i for i, each in enumerate(values) if len(each) > 1]
        for job in jobs:
            try:
                cfg = hydra.compose(config_name=config_name, overrides=[*job, *search])
            except HydraException:
                return  # Hydra words it as it composes the jobs itself
            try:
                check_job(cfg)
            except UserError as exc:
                where = f" (in the sweep's job {' '.join(job[i] for i in swept)})" if swept else ""
                fail(prog, f"{exc}{where}")


def _job_values(overrides: list[str], config_dir: str | None = None) -> list[tuple[Override, list[str]]]:
    """Each override, with the key=value it gives each job of a sweep (model=mlp,cnn: [model=mlp, model=cnn]).
    glob() lists a group's options through a config loader: conf/'s, and a --config-dir's after them as Hydra
    searches them (model=glob(my*) may match only options of one's own)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser

    search = create_config_search_path(CONFIG_DIR)
    if config_dir:
        search.append("command-line", f"file://{Path(config_dir).absolute()}")
    parsed = OverridesParser.create(ConfigLoaderImpl(config_search_path=search)).parse_overrides(overrides)
    return [(o, [v for [v] in BasicSweeper.split_arguments([o], None)[0]]) for o in parsed]


_TYPED: list[str] = []  # the command line's arguments as typed, before fmnist added overrides for Hydra


def _added(overrides: list[str], after: list[str]) -> list[str]:
    """Add overrides to the command line Hydra reads, right after the last of the overrides it has (`after`), so
    that they win: not at its end, since Hydra's parser takes the overrides as one run of words (`model=mlp
    --multirun x=1` is 'unrecognized arguments: x=1')."""
    at = len(sys.argv)
    if after:  # the overrides are one run of words in argv: it ends at the last of them
        at = max(i for i, word in enumerate(sys.argv) if word == after[-1]) + 1
    sys.argv[at:at] = overrides
    return overrides


def _home_dirs(overrides: list[str]) -> list[str]:
    """`"hydra.run.dir='~/runs/a'"` (Hydra reads a ~ only in quotes, and the shell then leaves it alone): Hydra
    made a folder named `~` in the working directory. Expanded as a shell would, as fmnist's own paths are."""
    home = []
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        typed = typed_dir(overrides, key)
        if typed is not None and typed.startswith("~") and str(expanded := user_path(typed)) != typed:
            home.append(quoted_override(key, str(expanded)))
    return home


def typed_args() -> list[str]:
    """The command line's arguments as the user typed them, without those fmnist added for Hydra."""
    return list(_TYPED)


def typed_dir(overrides: list[str], key: str = "hydra.run.dir") -> str | None:
    """The `hydra.run.dir` (or another key's value) the command line sets (the last one wins, as in Hydra),
    None if it sets none."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    typed = [o for o in overrides if override_parts(o)[0] == key]
    if not typed:
        return None
    value = OverridesParser.create().parse_overrides(typed[-1:])[0].value()
    return value if isinstance(value, str) else str(value)
