"""What a config that came from a file may build: the classes fmnist's own conf/ groups name, and no more.

A checkpoint stores its training config as plain data, but building the model, loss, optimizer and
scheduler from it goes through Hydra's `_target_`, which imports and calls whatever it names. A crafted
checkpoint could name anything importable (a file writer, an unpickler, a shell), so a stored config is
checked here before anything is built from it: each group's `_target_` must be one that this package ships
in conf/, with only the keys conf/ gives it, no `_target_` (or other Hydra key) anywhere else, and no
interpolation. A user who trained their own class names it on the command line (`trust=[mypkg.Net]`):
trust comes from the person running the command, never from the file.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from fmnist.config import config_dir
from fmnist.errors import UserError, one_line

BUILT_GROUPS = ("model", "loss", "optimizer", "scheduler")
HYDRA_KEYS = {"_target_", "_partial_"}
# Plain data only: bounds on what a stored config may hold before anything walks it further.
MAX_DEPTH = 8
MAX_NODES = 10_000
MAX_STRING = 4096


@functools.cache
def shipped_targets() -> dict[str, dict[str, frozenset[str]]]:
    """group -> {_target_ -> the keys conf/ sets for it}, read from this installation's conf/ files."""
    found: dict[str, dict[str, set[str]]] = {group: {} for group in BUILT_GROUPS}
    root = config_dir()
    for group in BUILT_GROUPS:
        for path in sorted((root / group).glob("*.yaml")):
            node = _resolve_defaults(root / group, path)
            target = node.get("_target_")
            if isinstance(target, str):
                found[group].setdefault(target, set()).update(k for k in node if k != "defaults")
    return {g: {t: frozenset(keys) for t, keys in targets.items()} for g, targets in found.items()}


def _resolve_defaults(folder: Any, path: Any) -> dict[str, Any]:
    """A group option with its `defaults: [other]` merged in (bn_cnn_wide extends bn_cnn)."""
    node = yaml.safe_load(path.read_text()) or {}
    merged: dict[str, Any] = {}
    for parent in node.get("defaults", []):
        if isinstance(parent, str) and parent != "_self_":
            merged.update(_resolve_defaults(folder, folder / f"{parent}.yaml"))
    merged.update({k: v for k, v in node.items() if k != "defaults"})
    return merged


def check_stored_config(config: Any, trusted: frozenset[str] = frozenset(), *, source: str) -> None:
    """Refuse a stored config that would build anything but the allowlisted classes (UserError, one line).

    Runs before OmegaConf or Hydra see the config: nothing in it is resolved or instantiated here.
    """
    if not isinstance(config, Mapping):
        raise UserError(f"{source}: its config is {type(config).__name__}, not a mapping")
    _check_plain(config, "config", depth=0, budget=[MAX_NODES], source=source)
    shipped = shipped_targets()
    for path, key, value in _walk(config, ""):
        if key in HYDRA_KEYS or (isinstance(key, str) and key.startswith("_") and key.endswith("_")):
            group = path.rsplit(".", 1)[0] if "." in path else ""
            if group not in BUILT_GROUPS or key not in HYDRA_KEYS:
                raise UserError(f"{source}: refusing {path}: only {', '.join(BUILT_GROUPS)} may name a class "
                                f"(_target_), and nothing else may carry Hydra keys")
        if isinstance(value, str) and "${" in value:
            raise UserError(f"{source}: refusing {path}={one_line(value, 80)}: a stored config holds resolved values, "
                            f"never interpolations")
    for group in BUILT_GROUPS:
        node = config.get(group)
        if node is None:
            continue
        if not isinstance(node, Mapping):
            raise UserError(f"{source}: config.{group} is {type(node).__name__}, not a mapping")
        target = node.get("_target_")
        if target is None:
            if group == "scheduler":  # scheduler=none: nothing to build
                continue
            raise UserError(f"{source}: config.{group} names no class (_target_)")
        if not isinstance(target, str):
            raise UserError(f"{source}: config.{group}._target_ is not a class name")
        if target in trusted:
            continue
        allowed = shipped[group]
        if target not in allowed:
            raise UserError(f"{source}: refusing {group}._target_={one_line(target, 80)}: not a class fmnist ships "
                            f"({', '.join(sorted(allowed))}); if you wrote it, pass trust=[{one_line(target, 80)}]")
        extra = sorted(str(k) for k in node if k not in allowed[target])
        if extra:
            raise UserError(f"{source}: refusing {group}.{extra[0]}: fmnist's conf/ never passes it to {target}; "
                            f"if you set it yourself, pass trust=[{target}]")


def _check_plain(node: Any, path: str, depth: int, budget: list[int], source: str) -> None:
    """Only dicts with string keys, lists, str, int, float, bool and None; bounded in depth and size."""
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise UserError(f"{source}: its config is too large or too deeply nested to be one fmnist wrote")
    if isinstance(node, Mapping):
        for key, value in node.items():
            if not isinstance(key, str):
                raise UserError(f"{source}: {path} has a key that is not a string ({type(key).__name__})")
            _check_plain(value, f"{path}.{key}", depth + 1, budget, source)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _check_plain(value, f"{path}[{i}]", depth + 1, budget, source)
    elif isinstance(node, str):
        if len(node) > MAX_STRING:
            raise UserError(f"{source}: {path} is a string of {len(node)} characters")
    elif node is not None and not isinstance(node, bool | int | float):
        raise UserError(f"{source}: {path} is a {type(node).__name__}, not plain config data")


def _walk(node: Any, prefix: str) -> Iterable[tuple[str, Any, Any]]:
    """(dotted path, key, value) for every mapping entry in the tree, lists included."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path, key, value
            yield from _walk(value, path)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            path = f"{prefix}[{i}]"
            yield path, None, value
            yield from _walk(value, path)
