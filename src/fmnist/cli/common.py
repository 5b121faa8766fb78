"""What every entry point shares: a Hydra app whose every user mistake is one line with exit code 2, found
before anything is created or imported that the mistake does not need.

Hydra reports its own errors (an unknown group option, a mistyped key, an unparsable override, a run
directory it cannot create) as ten lines and exit code 1. The entry points ask Hydra to raise them instead
(HYDRA_FULL_ERROR) and word them here, with the valid choices and the closest match. A single run's config
is composed and validated before Hydra starts the run, so a rejected config leaves no run directory; and
this module imports neither torch nor matplotlib, so `--help`, `--cfg job` and a config error answer at once.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import io
import logging
import multiprocessing.util
import os
import re
import signal
import string
import sys
import threading
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import hydra
import yaml
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

from fmnist.artifacts.atomic import check_dir_target, in_the_way
from fmnist.artifacts.inputs import check_checkpoint_file, checkpoint_path, existing_file
from fmnist.artifacts.rundir import check_some_checkpoint
from fmnist.cli.callbacks import discard_rejected_sweep
from fmnist.config import CONFIG_DIR, InspectConfig, PredictConfig, option_files
from fmnist.errors import UserError

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
        existing_file(settings.image, "image")
    if settings.out_path:
        check_dir_target(settings.out_path)
    return settings


def hydra_app(prog: str, config_name: str, check: Callable[[DictConfig], Any],
              before_run: Callable[[], None] | None = None,
              sleeping_threads: Callable[[list[str]], bool] = lambda overrides: True,
              place: Callable[[Any, str | None], list[str]] | None = None,
              ) -> Callable[[Callable[[Any], Any]], Callable[[], None]]:
    """Decorator: the console-script `main()` of a Hydra task function, with Hydra's errors in one line and
    a single run's config checked by `check` (config.py's validation) before the run starts; `before_run`
    then runs before Hydra resolves the run directory (fmnist-train joins a distributed run's ranks there).
    `sleeping_threads(overrides)`: whether OpenMP's threads should sleep instead of spin while they wait.
    `place(settings, run_dir)`: given what `check` returned and the `hydra.run.dir` the command typed (None
    where it typed none), refuse the directory (UserError) or return overrides that tell Hydra where to write
    its log and `.hydra/`, before Hydra writes either."""

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
                args = get_args_parser().parse_args()
                if sleeping_threads(args.overrides):
                    # OpenMP threads that sleep when idle instead of spinning: several torch processes on one
                    # CPU (parallel sweep jobs, a busy laptop) otherwise starve each other. Read when torch loads.
                    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
                if args.help and not (args.config_path or args.config_name or args.config_dir):
                    print(_app_help(config_name, args.overrides, args.resolve))
                    return
                if args.shell_completion and any(o.startswith("query=") for o in args.overrides):
                    print(_own_completions(_captured_stdout(app), config_name))
                    return
                checked = _check_single_run(prog, config_name, check, args)
                if place is not None and checked is not None:
                    try:
                        _ADDED[:] = place(checked[0], _typed_run_dir(args.overrides))
                    except UserError as exc:
                        fail(prog, str(exc))
                    sys.argv += _ADDED
                if before_run is not None:
                    before_run()
                app()
            except MissingConfigException as exc:
                discard_rejected_sweep()
                fail(prog, _missing_option(exc))
            except ConfigCompositionException as exc:
                discard_rejected_sweep()
                fail(prog, _composition(exc, prog, config_name, args.overrides))
            except OverrideParseException as exc:
                fail(prog, f"cannot parse the overrides ({str(exc).splitlines()[0]}); write them as key=value")
            except HydraException as exc:
                fail(prog, _sampled_sweep(args.overrides) or (str(exc).splitlines()[0] if str(exc) else
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


def _app_help(config_name: str, overrides: list[str], resolve: bool) -> str:
    """The text of Hydra's --help (the app's hydra.help template, its groups, the composed config), made here.

    Hydra fills the template by listing the options of every config group twice, its own launchers,
    sweepers and loggers included, each listing a deep copy of the whole config repository: 1.4-1.8 s on a
    2-core CPU for a template that shows only the app's groups. Those are the folders of conf/ (plugins add
    groups under hydra/ only), so reading them and composing once gives the same text in a third of the time.
    Only the groups the app's own config chooses from are listed: conf/ also holds the training groups, which
    fmnist-eval and fmnist-predict take from the checkpoint.
    """
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra.compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # for ${hydra:...} in the config when --resolve is given
    template = cfg.hydra.help.template
    with open_dict(cfg):
        del cfg["hydra"]
    groups = "".join(f"{name}: {', '.join(sorted(p.stem for p in (Path(CONFIG_DIR) / name).glob('*.yaml')))}\n"
                     for name in sorted(_app_groups(config_name)))
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
    foreign = _other_apps_groups(config_name)

    def own(word: str) -> bool:
        group = re.match(r"[+~]?([\w-]+)[=/]", word)
        return not (group and group.group(1) in foreign)

    lines = (" ".join(w for w in line.split(" ") if own(w)) for line in words.rstrip("\n").split("\n"))
    return "\n".join(line for line in lines if line)


def _check_single_run(prog: str, config_name: str, check: Callable[[DictConfig], Any], args: Any
                      ) -> tuple[Any] | None:
    """Compose and validate the config of a plain run the way Hydra will, so that a rejected one is one line
    and leaves nothing behind (Hydra creates the run directory before the task sees the config). Returns what
    `check` returned, or None where nothing was checked: sweeps, --cfg and the like go to Hydra as they are (a
    sweep records each job's failure in its folder). (--help never gets here: main() answers it, or Hydra does
    for another config.)"""
    if args.multirun or args.hydra_help or args.cfg or args.info or args.shell_completion or \
            args.config_path or args.config_name or args.experimental_rerun:
        return None
    overrides = list(args.overrides)
    if args.config_dir:  # options of the user's own, searched after fmnist's as Hydra's --config-dir does
        if not Path(args.config_dir).is_dir() or any(o.startswith("hydra.searchpath") for o in overrides):
            return None  # Hydra's own words for a missing folder; a search path of both kinds is Hydra's to merge
        overrides.append(f"hydra.searchpath=[file://{Path(args.config_dir).absolute()}]")
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra.compose(config_name=config_name, overrides=overrides)
    try:
        return (check(cfg),)
    except UserError as exc:
        fail(prog, str(exc))


_ADDED: list[str] = []  # overrides that `place` appended to the command line


def typed_args() -> list[str]:
    """The command line's arguments as the user typed them, without those fmnist added for Hydra."""
    return sys.argv[1:len(sys.argv) - len(_ADDED)]


def _typed_run_dir(overrides: list[str]) -> str | None:
    """The `hydra.run.dir` the command line sets (the last one wins, as in Hydra), None if it sets none."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    typed = [o for o in overrides if override_parts(o)[0] == "hydra.run.dir"]
    if not typed:
        return None
    value = OverridesParser.create().parse_overrides(typed[-1:])[0].value()
    return value if isinstance(value, str) else str(value)


def _sampled_sweep(overrides: list[str]) -> str | None:
    """What to say of an interval() that reached the basic sweeper, which names only the sweep's type."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override() and not override.is_discrete_sweep():
            return (f"{override.input_line}: the default sweeper runs lists (a,b), range() and glob() only; an "
                    f"interval is sampled by a search: add hparams_search=optuna (its other keys too), or "
                    f"hydra/sweeper=optuna hydra.sweeper.direction=maximize (pip install 'fmnist[sweep]')")
    return None


def _missing_option(exc: MissingConfigException) -> str:
    """model=resnet -> 'model=resnet is not an option: choose one of ... (did you mean ...?)'."""
    found = re.search(r"Could not find '([^']+)'", str(exc))
    wanted = found.group(1) if found else (exc.missing_cfg_file or "?")
    group, _, option = wanted.rpartition("/")
    options = sorted(exc.options or [])
    if not options or not group:
        return str(exc).splitlines()[0]
    return f"{group}={option} is not an option: choose one of {', '.join(options)}{_closest(option, options)}"


def _composition(exc: ConfigCompositionException, prog: str, config_name: str, overrides: list[str]) -> str:
    """modle=cnn -> 'modle is not a config key (did you mean model?) ...'."""
    text = str(exc)
    found = re.search(r"Could not override '([^']+)'", text) or re.search(r"Could not append to config. An item is "
                                                                         r"already at '([^']+)'", text)
    if found and "Could not override" in text:
        key = found.group(1)
        group = key.split(".")[0]
        if group in _other_apps_groups(config_name):  # eval's model=cnn
            return (f"{key} is not a setting of {prog}: it comes from the checkpoint's training config "
                    f"({prog} --help lists the settings)")
        if key in _known_keys(config_name):  # e.g. optimizer.nesterov with optimizer=rmsprop
            lacking = [o for o in _chosen_options(config_name, overrides).get(group, [])
                       if key not in _config_keys(config_name, _option_files({group: [o]}))]
            which = f"{group}={','.join(lacking)}" if lacking else f"the {group} chosen"
            return (f"{key} is not a setting of {which} (only of other {group} options): drop it, "
                    f"or choose an option that has it")
        hint = _closest(key, _chosen_keys(config_name, overrides))
        return f"{key} is not a config key{hint}; to add a new key on purpose, write +{key}=VALUE"
    return " ".join(text.split())


def _closest(word: str, choices: list[str]) -> str:
    """The likeliest meant choice: for a dotted key, among the keys beside it (a shared `scheduler.` prefix
    would make any two of them look alike), else among all as deep as it (`model`, a group, is no key that
    `model.hiden` meant)."""
    parent, _, leaf = word.rpartition(".")
    siblings = [c.rpartition(".")[2] for c in choices if parent and c.rpartition(".")[0] == parent]
    if siblings:
        match = [f"{parent}.{m}" for m in difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)]
    else:
        deep = [c for c in choices if c.count(".") == word.count(".")]
        match = difflib.get_close_matches(word, deep, n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


@cache
def _primary(config_name: str) -> dict[str, Any]:
    return yaml.safe_load((Path(CONFIG_DIR) / f"{config_name}.yaml").read_text()) or {}


@cache
def _default_choices(config_name: str) -> dict[str, Any]:
    """The primary config's defaults list as group -> option (Hydra's `override hydra/...` entries included)."""
    return _defaults_list(_primary(config_name))


def _defaults_list(node: Any) -> dict[str, Any]:
    """A config's defaults list as {entry: option}, e.g. {"model": "cnn"}, {"override /model": "speednet"}."""
    entries = node.get("defaults", []) if isinstance(node, dict) else []
    return {k: v for e in entries if isinstance(e, dict) for k, v in e.items()}


@cache
def _app_groups(config_name: str) -> frozenset[str]:
    """The config groups the primary config's defaults list chooses from (train: dataset, model, ...; eval and
    predict: none), never Hydra's own."""
    return frozenset(k for k in _default_choices(config_name) if not k.startswith(("override ", "hydra")))


@cache
def _other_apps_groups(config_name: str) -> frozenset[str]:
    """The config groups in conf/ that another entry point chooses from, not this one (eval: model, optimizer,
    ...; train: none). Hydra's own (hydra/) belong to every app."""
    return frozenset(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()) - _app_groups(config_name) - {"hydra"}


@cache
def _known_keys(config_name: str) -> list[str]:
    """Dotted keys of the primary config and of every option of its config groups."""
    return _config_keys(config_name, lambda group: (Path(CONFIG_DIR) / group).glob("*.yaml"))


def override_parts(override: str) -> tuple[str, str]:
    """`+model=cnn` -> ("model", "cnn"); `~logger` -> ("logger", "")."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _chosen_options(config_name: str, overrides: list[str]) -> dict[str, list[str]]:
    """group -> the options this command composes, as Hydra ranks them: the defaults list's, then those an
    experiment chosen overrides, then the command's `group=option` (each option of a sweep's `model=mlp,cnn`
    or `choice(mlp,cnn)`)."""
    chosen: dict[str, list[str]] = {}
    for group, option in _default_choices(config_name).items():
        chosen[group] = [option] if isinstance(option, str) else [o for o in option or [] if isinstance(o, str)]
    named: dict[str, list[str]] = {}
    for override in overrides:
        group, value = override_parts(override)
        value = value.strip()
        if value.startswith("choice(") and value.endswith(")"):
            value = value[len("choice("):-1]
        named[group] = [v.strip().strip("'\"") for v in value.split(",") if v.strip()]
    by_experiments: dict[str, list[str]] = {}
    for experiment in named.get("experiment", chosen.get("experiment", [])):  # its `override /model: speednet`
        path = Path(CONFIG_DIR) / "experiment" / f"{experiment}.yaml"
        for key, option in _defaults_list(yaml.safe_load(path.read_text()) if path.is_file() else None).items():
            if key.startswith("override /") and isinstance(option, str):
                by_experiments.setdefault(key.removeprefix("override /"), []).append(option)
    return chosen | by_experiments | named


def _option_files(chosen: dict[str, list[str]]) -> Callable[[str], list[Path]]:
    """For _config_keys: the files of the options `chosen` for a group, each after those it extends."""
    def files(group: str) -> list[Path]:
        return [path for option in chosen.get(group, []) for path in option_files(group, option)]
    return files


def _chosen_keys(config_name: str, overrides: list[str]) -> list[str]:
    """Dotted keys of the primary config and of the options chosen (_chosen_options): what a mistyped key may
    have meant, never a key of an option not chosen."""
    return _config_keys(config_name, _option_files(_chosen_options(config_name, overrides)))


def _config_keys(config_name: str, options: Callable[[str], Iterable[Path]]) -> list[str]:
    """Dotted keys of the primary config, its groups' names, and the keys of each group's option files that
    `options(group)` names."""
    keys: set[str] = set(_flatten(_primary(config_name), "")) | set(_app_groups(config_name))
    for group in _app_groups(config_name):
        for option in options(group):
            keys.update(_flatten(yaml.safe_load(option.read_text()) or {}, group))
    return sorted(k for k in keys if not k.startswith(("hydra", "defaults")))


def _flatten(node: Any, prefix: str) -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out.add(path)
            out |= _flatten(value, path)
    return out
