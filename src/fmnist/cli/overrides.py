"""The command line's overrides read against conf/, without composing: which options they choose, the keys
those give, and Hydra's errors about them as one line each, with the valid choices and the closest match.

Hydra words a mistyped key or an unknown option as ten lines that name its internals (`Could not override
'modle'`); what the user typed is all the line should need.
"""

from __future__ import annotations

import difflib
import re
import shutil
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from hydra.errors import ConfigCompositionException, MissingConfigException

from fmnist.config import CONFIG_DIR, FIXED_NODES, option_files

_USER_DIRS: list[Path] = []  # a --config-dir's folder: its options, and their keys, count too


def add_config_dir(path: str) -> None:
    """The command's --config-dir, whose options (and their keys) the lines below offer beside conf/'s."""
    _USER_DIRS[:] = [Path(path)]


def group_options(group: str) -> list[str]:
    """The options conf/ (and a --config-dir) has for a config group (its folder's files), sorted."""
    return sorted({p.stem for p in _group_files(group, tuple(_USER_DIRS))})


def _group_files(group: str, user_dirs: tuple[Path, ...]) -> list[Path]:
    """The option files of a config group in conf/ and in `user_dirs`."""
    return [p for d in (Path(CONFIG_DIR), *user_dirs) for p in (d / group).glob("*.yaml")]


def sampled_sweep_error(overrides: list[str]) -> str | None:
    """What to say of an interval() that reached the basic sweeper, which names only the sweep's type."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override() and not override.is_discrete_sweep():
            return (f"{override.input_line}: the default sweeper runs lists (a,b), range() and glob() only; an "
                    f"interval is sampled by a search: add hparams_search=optuna (its other keys too), or "
                    f"hydra/sweeper=optuna hydra.sweeper.direction=maximize (pip install 'fmnist[sweep]')")
    return None


def empty_sweep_error(override: str, key: str, config_name: str) -> str:
    """A swept value that makes no job (a glob that matches no option, or over a setting, which has none; an
    empty range): Hydra would launch a sweep of no jobs and exit 0."""
    if key in app_groups(config_name):
        return f"{override} matches none of {key}'s options: {', '.join(group_options(key))}"
    if "glob(" in override:
        return (f"{override}: glob() picks among a config group's options (model=glob(*)); {key} is a setting: "
                f"list its values, {key}=A,B")
    return f"{override} sweeps no values"


def sweep_resume_error(overrides: list[str]) -> str | None:
    """resume= naming a run in a --multirun: every job would continue that one run, in its directory, the first
    holding it and the others refused, while the sweep's summary, read from the jobs' own folders, reported
    each job as not started."""
    for key, value in map(override_parts, overrides):
        if key == "resume" and value.strip() not in ("auto", "null"):
            return (f"resume={value} in a --multirun: a sweep's jobs each continue their own run (resume=auto, with "
                    f"the sweep's hydra.sweep.dir); continue a run of your own without --multirun")
    return None


CLUSTER_LAUNCHERS = ("slurm", "submitit_slurm")


def on_a_cluster(overrides: list[str]) -> bool:
    """Whether the sweep's jobs run on a cluster's nodes, which may see other files than the machine that
    submits them."""
    return any(key == "hydra/launcher" and value.strip() in CLUSTER_LAUNCHERS
               for key, value in map(override_parts, overrides))


def launcher_error(overrides: list[str]) -> str | None:
    """What a launcher would raise as a traceback once the sweep's folder exists: the joblib launcher's n_jobs=0,
    the SLURM launcher on a machine without SLURM (submitit looks for `srun`, as here)."""
    for key, value in map(override_parts, overrides):
        if key == "hydra/launcher" and value.strip() in CLUSTER_LAUNCHERS and not shutil.which("srun"):
            return (f"hydra/launcher={value.strip()} submits the jobs to a SLURM cluster, but there is no srun on "
                    "this machine's PATH: run the sweep on the cluster, or leave hydra/launcher out to run it here")
        if key == "hydra.launcher.n_jobs" and value.strip() in ("0", "+0", "-0"):
            return (f"hydra.launcher.n_jobs={value} is not valid: expected the number of jobs at once (1 or more; "
                    f"-1: one per core, -2: all but one)")
    return None


def unparsable_error(overrides: list[str]) -> str | None:
    """The first override Hydra's grammar cannot read, and how to write it: `dataset.root=~/data` (the shell
    leaves the ~ to the program here) was 'LexerNoViableAltException: dataset.root=~/data; write them as
    key=value', which it was. A value with a character the grammar reads only in quotes (~ # ( [ = or a letter
    outside ASCII) is quoted in the answer where that makes it readable."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()

    def readable(override: str) -> bool:
        try:
            parser.parse_overrides([override])
        except OverrideParseException:
            return False
        return True

    for override in overrides:
        if readable(override):
            continue
        key, equals, value = override.partition("=")
        if not equals:
            return f"cannot parse {override}: an override is written key=value"
        quoted = f"{key}='{value}'"
        if value and value[0] not in "[{" and not any(c in value for c in "'\"\\") and readable(quoted):
            return (f"{override}: Hydra reads this value only in quotes: write {quoted} (in a shell, in double "
                    f"quotes too: \"{quoted}\")")
        return f"cannot parse {override}: check its brackets and quotes (a list: key=[a,b]; text: key='...')"
    return None


def group_value_error(prog: str, config_name: str, overrides: list[str]) -> str | None:
    """A config group given null (Hydra's traceback: 'Config group override must be a string or a list'), a
    list where the group takes one option (model=[mlp,cnn] merged both models into one config), a group that
    every run needs deleted (~model: a traceback), or no key at all (`=5`). Another entry point's group (eval's
    dataset=null) is worded as composition_error words it."""
    for override in overrides:
        group, value = override_parts(override)
        if not group:  # `=5`: Hydra takes it for a config group named '' (a traceback)
            return f"{override}: an override needs a key, key=value"
        if group in other_apps_groups(config_name):
            return other_apps_key_error(group, prog)
        if group not in app_groups(config_name):
            continue
        value = value.strip()
        default = _default_choices(config_name)[group]
        options = ", ".join(group_options(group))
        if override.startswith("~"):
            if isinstance(default, list):
                return f"{override}: to train without any {group}, write {group}=[]"
            if default is not None:
                return f"{override}: {group} cannot be left out: choose one of {options}"
        elif value == "null":
            off = f", or leave {group} out (it is off by default)" if default is None else ""
            as_list = f", or a list, {group}=[] for none" if isinstance(default, list) else ""
            return f"{group}=null is not an option: choose one of {options}{as_list}{off}"
        if value.startswith("[") and not isinstance(default, list):
            return (f"{group}={value}: {group} takes one option ({options}); to train each, sweep them: "
                    f"--multirun {group}={value.strip('[]')}")
    return None


def other_apps_key_error(key: str, prog: str) -> str:
    """eval's model=cnn: a key of the training config, which eval and predict take from the checkpoint."""
    return (f"{key} is not a setting of {prog}: it comes from the checkpoint's training config ({prog} --help "
            f"lists the settings)")


def missing_option_error(exc: MissingConfigException) -> str:
    """model=resnet -> 'model=resnet is not an option: choose one of ... (did you mean ...?)'; logger=[csv,wandb]
    (an option in a list, which Hydra words as 'Could not load') alike."""
    found = re.search(r"Could not (?:find|load) '([^']+)'", str(exc))
    wanted = found.group(1) if found else (exc.missing_cfg_file or "?")
    group, _, option = wanted.rpartition("/")
    options = sorted(exc.options or (group_options(group) if group else []))
    if not options or not group:
        return str(exc).splitlines()[0]
    return f"{group}={option} is not an option: choose one of {', '.join(options)}{_closest(option, options)}"


def composition_error(exc: ConfigCompositionException, prog: str, config_name: str, overrides: list[str]) -> str:
    """modle=cnn -> 'modle is not a config key (did you mean model?) ...'."""
    text = str(exc)
    found = re.search(r"Could not override '([^']+)'", text) or re.search(r"Could not append to config. An item is "
                                                                         r"already at '([^']+)'", text)
    if found and "Could not override" in text:
        key = found.group(1)
        group = key.split(".")[0]
        if group in other_apps_groups(config_name):  # eval's model=cnn
            return other_apps_key_error(key, prog)
        if key in _known_keys(config_name):  # e.g. optimizer.nesterov with optimizer=rmsprop
            lacking = [o for o in _chosen_options(config_name, overrides).get(group, [])
                       if key not in _config_keys(config_name, _option_files({group: [o]}))]
            which = f"{group}={','.join(lacking)}" if lacking else f"the {group} chosen"
            return (f"{key} is not a setting of {which} (only of other {group} options): drop it, "
                    f"or choose an option that has it")
        hint = _closest(key, _chosen_keys(config_name, overrides))
        if config_name == "train" and key.rpartition(".")[0] in FIXED_NODES:  # a key added there is refused too
            return f"{key} is not a config key{hint}"
        return f"{key} is not a config key{hint}; to add a new key on purpose, write +{key}=VALUE"
    chosen = re.search(r"Multiple values for (\S+)\.", text) or re.search(r"(\S+) appears more than once in the "
                                                                         r"final defaults list", text)
    if chosen:  # +model=cnn, +experiment=fashion_best: the group has its place in the defaults list already
        group = chosen.group(1)
        value = next((override_parts(o)[1] for o in overrides if o.startswith("+") and override_parts(o)[0] == group),
                     "OPTION")
        return f"+{group}={value}: {group} is chosen in the defaults already; write {group}={value} (without +)"
    ambiguous = re.match(r"Ambiguous value for argument '(.*)'$", text.splitlines()[0])
    if ambiguous:  # model=mlp,cnn without --multirun: Hydra's three numbered ways, which a group has one of
        typed = ambiguous.group(1)
        key, value = typed.split("=", 1)  # as typed, `+` and all
        if key in app_groups(config_name):
            return f"{typed}: to train each, sweep them: {prog} --multirun {typed}"
        return (f"{typed}: a comma sweeps the values only with --multirun ({prog} --multirun {typed}); a list is "
                f"written {key}=[{value}], text {key}='{value}'")
    merging = re.match(r"Error merging override (\S+)", text)
    if merging and exc.__cause__ is not None:  # a value of the wrong type for a typed key of Hydra's own
        return f"{merging.group(1)} is not valid: {str(exc.__cause__).splitlines()[0]}"
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
def app_groups(config_name: str) -> frozenset[str]:
    """The config groups the primary config's defaults list chooses from (train: dataset, model, ...; eval and
    predict: none), never Hydra's own."""
    return frozenset(k for k in _default_choices(config_name) if not k.startswith(("override ", "hydra")))


@cache
def other_apps_groups(config_name: str) -> frozenset[str]:
    """The config groups in conf/ that another entry point chooses from, not this one (eval: model, optimizer,
    ...; train: none). Hydra's own (hydra/) belong to every app."""
    return frozenset(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()) - app_groups(config_name) - {"hydra"}


def _known_keys(config_name: str) -> list[str]:
    """Dotted keys of the primary config and of every option of its config groups."""
    return _keys_of_every_option(config_name, tuple(_USER_DIRS))


@cache
def _keys_of_every_option(config_name: str, user_dirs: tuple[Path, ...]) -> list[str]:
    return _config_keys(config_name, lambda group: _group_files(group, user_dirs))


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
        return [path for option in chosen.get(group, []) for path in option_files(group, option, tuple(_USER_DIRS))]
    return files


def _chosen_keys(config_name: str, overrides: list[str]) -> list[str]:
    """Dotted keys of the primary config and of the options chosen (_chosen_options): what a mistyped key may
    have meant, never a key of an option not chosen."""
    return _config_keys(config_name, _option_files(_chosen_options(config_name, overrides)))


def _config_keys(config_name: str, options: Callable[[str], Iterable[Path]]) -> list[str]:
    """Dotted keys of the primary config, its groups' names, and the keys of each group's option files that
    `options(group)` names."""
    keys: set[str] = set(_flatten(_primary(config_name), "")) | set(app_groups(config_name))
    for group in app_groups(config_name):
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
