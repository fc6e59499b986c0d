"""Validate a composed config before anything is instantiated or loaded.

Every ``_target_`` node is checked against the signature of the class or function it names:
unknown keys, missing required values (``???``) and values of the wrong type each give one
:class:`ConfigError` line naming the full key. Range checks (positive sizes, latent smaller than
the input, existing paths) live in the constructors themselves and are reported by
:func:`latentbench.instantiate.build` with the same key prefix.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Literal, Union

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from latentbench.errors import ConfigError, did_you_mean

TOP_LEVEL_TYPES = {
    "seed": int,
    "deterministic": bool,
    "run_name": str,
    "optimized_metric": str | None,
    "channels_last": bool,
    "matmul_precision": Literal["highest", "high", "medium"],
    "resume": str | None,
    "fused_steps": int,
}


# Keys that moved out of the model config (the LDM's sample metrics and grid became callbacks).
MOVED_KEYS = {
    "model.fid": "metrics.fid (with images=auto it measures a diffusion model's samples)",
    "model.sampling.every_n_epochs": "callbacks.sample_grid.every_n_epochs",
}


def check_moved_keys(cfg: DictConfig) -> None:
    for old, new in MOVED_KEYS.items():
        if OmegaConf.select(cfg, old, default=None) is not None:
            raise ConfigError(f"{old}: moved to {new}")


def is_moved_override(override: str) -> bool:
    """``model.fid.enabled=true`` and the like: an override of a key that moved (an older run's record)."""
    key = override.lstrip("+~").partition("=")[0]
    return any(key == old or key.startswith(old + ".") for old in MOVED_KEYS)


def drop_moved_keys(model: DictConfig) -> DictConfig:
    """An older run's recorded model node without the keys that moved (for ``latentbench eval``)."""
    model = model.copy()
    for old in MOVED_KEYS:
        parent, _, name = old.removeprefix("model.").rpartition(".")
        node = OmegaConf.select(model, parent) if parent else model
        if isinstance(node, DictConfig) and name in node:
            with open_dict(node):
                node.pop(name)
    return model


def check_config(cfg: DictConfig, nodes: tuple[str, ...] = ("data", "model", "corruption", "trainer", "logger", "callbacks", "metrics")) -> None:
    """Raise ConfigError for the first missing value, unknown key or wrongly typed value in ``cfg``."""
    check_moved_keys(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]}: missing required value (set it on the command line, e.g. {missing[0]}=...)")
    for key, kind in TOP_LEVEL_TYPES.items():
        if key in cfg and not OmegaConf.is_interpolation(cfg, key) and not _matches(cfg[key], kind):
            raise ConfigError(f"{key}: expected {_describe(kind)}, got {cfg[key]!r} ({type(cfg[key]).__name__})")
    check_fused_steps(cfg)
    for name in nodes:
        if name in cfg and cfg[name] is not None:
            _check_node(cfg[name], name)


def check_fused_steps(cfg: DictConfig) -> None:
    """``fused_steps`` K runs K optimizer steps per Lightning step; the trainer's counts in steps and
    batches must then fall on whole groups of K (so that a saved position is a whole group)."""
    steps = cfg.get("fused_steps", 1)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"fused_steps: expected a positive integer, got {steps!r}")
    if steps == 1 or "trainer" not in cfg:
        return
    trainer = cfg.trainer
    for key in ("max_steps", "limit_train_batches", "val_check_interval"):
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0 and value % steps:
            raise ConfigError(f"trainer.{key}: {value} is not a multiple of fused_steps={steps}")
    if trainer.get("accumulate_grad_batches", 1) not in (1, None):
        raise ConfigError(f"trainer.accumulate_grad_batches: gradient accumulation does not combine with fused_steps={steps}")


def _check_node(node: Any, key: str) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            _check_target(node, key)
        for child, value in node.items_ex(resolve=False):
            if not str(child).startswith("_"):
                _check_node(value, f"{key}.{child}")
    elif isinstance(node, ListConfig):
        for index, value in enumerate(node):
            _check_node(value, f"{key}[{index}]")


# Keys the harness reads itself from a ``_target_`` node before building it, so they are not
# arguments of the target: ``model.scheduler.interval`` (see ``models.base.optimizer_and_scheduler``).
HARNESS_KEYS = {"model.scheduler": {"interval": ("epoch", "step")}}


def _check_harness_keys(node: DictConfig, key: str) -> set[str]:
    """Checks the harness's own keys of the node at ``key``; returns their names."""
    own = HARNESS_KEYS.get(key, {})
    for name, allowed in own.items():
        if name in node and node[name] not in allowed:
            raise ConfigError(f"{key}.{name}: expected one of {', '.join(map(repr, allowed))}, got {node[name]!r}")
    return set(own)


def _check_target(node: DictConfig, key: str) -> None:
    target = node["_target_"]
    own_keys = _check_harness_keys(node, key)
    try:
        obj = get_object(target)
    except Exception as error:  # ImportError, AttributeError: any failure means the name is wrong
        raise ConfigError(f"{key}._target_: cannot import '{target}' ({type(error).__name__})") from None
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:
        hints = {}
    for name in node.keys():
        name = str(name)
        if name.startswith("_") or name in own_keys:
            continue
        if name not in params:
            if accepts_kwargs:
                continue
            allowed = [p for p in params if p not in ("self", "args", "kwargs")]
            raise ConfigError(f"{key}.{name}: unknown key for {target}{did_you_mean(name, allowed)} (allowed: {', '.join(allowed)})")
        if name in hints and not OmegaConf.is_interpolation(node, name):
            value = node[name]
            if not _matches(value, hints[name]):
                raise ConfigError(
                    f"{key}.{name}: expected {_describe(hints[name])}, got {value!r} ({type(value).__name__})"
                )


def _matches(value: Any, hint: Any) -> bool:
    """True when a config value fits a type hint; hints this checker does not understand pass."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if isinstance(value, DictConfig) and "_target_" in value:
        return True  # an object the config builds; its own signature is checked separately
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (ListConfig, list, tuple)):
            return False
        if not args or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
            inner = args[0] if args else Any
            return all(_matches(item, inner) for item in value)
        if origin is tuple:
            return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(item, args[0]) for item in value)
    if origin is dict or hint is dict:
        return isinstance(value, (DictConfig, dict))
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is type(None):
        return "null"
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    return getattr(hint, "__name__", str(hint))
