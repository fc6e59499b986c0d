"""Validate a composed config before anything is instantiated or loaded.

Every ``_target_`` node is checked against the signature of the class or function it names:
unknown keys, missing required values (``???``) and values of the wrong type each give one
:class:`ConfigError` line naming the full key. Range checks (positive sizes, latent smaller than
the input, existing paths) live in the constructors themselves and are reported by
:func:`latentbench.instantiate.build` with the same key prefix.
"""

from __future__ import annotations

import ast
import functools
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from latentbench.errors import ConfigError, did_you_mean

TOP_LEVEL_TYPES = {
    "seed": int,
    "deterministic": bool,
    "run_name": str,
    "optimized_metric": str | None,
    "channels_last": bool | Literal["auto"],
    "matmul_precision": Literal["highest", "high", "medium"],
    "resume": str | None,
    "fused_steps": int | Literal["auto"],
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


def check_config(cfg: DictConfig, nodes: tuple[str, ...] = ("data", "model", "corruption", "trainer", "logger", "callbacks", "metrics"),
                 without_imports: bool = False) -> None:
    """Raise ConfigError for the first missing value, unknown key or wrongly typed value in ``cfg``.

    ``without_imports``: import nothing (the check before a job starts, so that a mistake answers
    before torch is loaded): latentbench's own targets are read from their source files, other
    packages' targets are left to the full check when the job builds its run."""
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
            _check_node(cfg[name], name, without_imports)


def counts_in_steps(trainer: DictConfig) -> dict[str, int]:
    """The trainer's positive integer counts that fused steps must divide: ``max_steps`` and, when
    given as counts (not fractions), ``limit_train_batches`` and ``val_check_interval``."""
    counts = {key: trainer.get(key) for key in ("max_steps", "limit_train_batches", "val_check_interval")}
    return {key: value for key, value in counts.items() if isinstance(value, int) and not isinstance(value, bool) and value > 0}


def check_fused_steps(cfg: DictConfig) -> None:
    """``fused_steps`` K runs K optimizer steps per Lightning step; the trainer's counts in steps and
    batches must then fall on whole groups of K (so that a saved position is a whole group)."""
    steps = cfg.get("fused_steps", 1)
    if steps == "auto":
        return  # K is then chosen to fit the counts (train.auto_fused_steps)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"fused_steps: expected a positive integer or auto, got {steps!r}")
    if steps == 1 or "trainer" not in cfg:
        return
    trainer = cfg.trainer
    for key, value in counts_in_steps(trainer).items():
        if value % steps:
            raise ConfigError(f"trainer.{key}: {value} is not a multiple of fused_steps={steps}")
    if trainer.get("accumulate_grad_batches", 1) not in (1, None):
        raise ConfigError(f"trainer.accumulate_grad_batches: gradient accumulation does not combine with fused_steps={steps}")


def _check_node(node: Any, key: str, without_imports: bool = False) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            _check_target(node, key, without_imports)
        for child, value in node.items_ex(resolve=False):
            if not str(child).startswith("_"):
                _check_node(value, f"{key}.{child}", without_imports)
    elif isinstance(node, ListConfig):
        for index, value in enumerate(node):
            _check_node(value, f"{key}[{index}]", without_imports)


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


@dataclass
class Parameters:
    """What the checker needs of a signature: parameter names, ``**kwargs`` or not, type hints."""

    names: list[str]
    accepts_kwargs: bool
    hints: dict[str, Any] = field(default_factory=dict)


def _imported_parameters(target: str, key: str) -> Parameters | None:
    try:
        obj = get_object(target)
    except Exception as error:  # ImportError, AttributeError: any failure means the name is wrong
        raise ConfigError(f"{key}._target_: cannot import '{target}' ({type(error).__name__})") from None
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:
        hints = {}
    return Parameters(list(params), any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), hints)


def target_parameters(target: str, key: str, may_import: bool = True) -> Parameters | None:
    """The parameters of ``target``: latentbench's read from source (with those its classes pass on
    to their base through ``**kwargs``), other packages' by importing them (not at all without
    ``may_import``); None when they cannot be told."""
    if target.startswith("latentbench."):
        found = source_parameters(target)
        if found is False:
            raise ConfigError(f"{key}._target_: cannot import '{target}' (no such class or function in latentbench)")
        if found is not None:
            return found
    return _imported_parameters(target, key) if may_import else None


def _check_target(node: DictConfig, key: str, without_imports: bool = False) -> None:
    target = node["_target_"]
    own_keys = _check_harness_keys(node, key)
    # without imports: another package's class is checked when the job builds its run
    signature = target_parameters(target, key, may_import=not without_imports)
    if not signature:
        return
    for name in node.keys():
        name = str(name)
        if name.startswith("_") or name in own_keys:
            continue
        if name not in signature.names:
            if signature.accepts_kwargs:
                continue
            allowed = [p for p in signature.names if p not in ("self", "args", "kwargs")]
            raise ConfigError(f"{key}.{name}: unknown key for {target}{did_you_mean(name, allowed)} (allowed: {', '.join(allowed)})")
        hint = signature.hints.get(name)
        if hint is not None and not OmegaConf.is_interpolation(node, name):
            value = node[name]
            if not _matches(value, hint):
                raise ConfigError(f"{key}.{name}: expected {_describe(hint)}, got {value!r} ({type(value).__name__})")


# -- latentbench's signatures read from source, without importing (torch) --------------------------
PACKAGE_DIR = Path(__file__).resolve().parent
HINT_NAMESPACE = {name: getattr(typing, name) for name in ("Any", "Literal", "Optional", "Union", "Sequence", "Callable", "Mapping")}


@functools.lru_cache(maxsize=None)  # a process checks the same few modules again and again (tests, multiruns)
def _module_tree(module: str) -> ast.Module | None:
    parts = module.split(".")[1:]
    for path in (PACKAGE_DIR.joinpath(*parts).with_suffix(".py"), PACKAGE_DIR.joinpath(*parts, "__init__.py")):
        if parts and path.is_file():
            return ast.parse(path.read_text())
    return None


def _imported_from(tree: ast.Module, module: str, name: str) -> str | None:
    """The full name ``name`` stands for in ``module`` when it comes from a ``from ... import``."""
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom):
            for alias in statement.names:
                if (alias.asname or alias.name) == name:
                    base = statement.module or ""
                    if statement.level:  # a relative import
                        base = ".".join(module.split(".")[: -statement.level] + ([base] if base else []))
                    return f"{base}.{alias.name}"
    return None


@functools.lru_cache(maxsize=None)
def _aliases(module: str, depth: int = 0) -> dict[str, Any]:
    """The type aliases a module defines or imports from latentbench (``Loss = Literal["mse", "bce"]``)."""
    names = dict(HINT_NAMESPACE)
    tree = _module_tree(module)
    if tree is None:
        return names
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom) and depth < 2:
            for alias in statement.names:
                full = _imported_from(tree, module, alias.asname or alias.name)
                if full and full.startswith("latentbench."):
                    value = _aliases(full.rpartition(".")[0], depth + 1).get(alias.name)
                    if value is not None:
                        names[alias.asname or alias.name] = value
        elif isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.targets[0], ast.Name):
            try:
                names[statement.targets[0].id] = eval(ast.unparse(statement.value), {"__builtins__": {}}, names)  # noqa: S307
            except Exception:  # not an alias of typing names
                pass
    return names


def _hint(annotation: ast.expr | None, aliases: dict[str, Any]) -> Any:
    if annotation is None:
        return None
    text = ast.unparse(annotation) if not isinstance(annotation, ast.Constant) else str(annotation.value)
    try:
        return eval(text, {"__builtins__": __builtins__}, aliases)  # noqa: S307 (our own source)
    except Exception:  # names of other modules (torch.Tensor, Corruption): not checked
        return None


def _function_parameters(function: ast.FunctionDef, skip_self: bool, aliases: dict[str, Any]) -> Parameters:
    arguments = function.args
    positional = [*arguments.posonlyargs, *arguments.args][1 if skip_self else 0:]
    every = [*positional, *arguments.kwonlyargs]
    hints = {a.arg: hint for a in every if (hint := _hint(a.annotation, aliases)) is not None}
    return Parameters([a.arg for a in every], arguments.kwarg is not None, hints)


def _base_class(tree: ast.Module, module: str, definition: ast.ClassDef) -> str | None:
    """Full name of the class's first base when it is a latentbench class, else None."""
    base = definition.bases[0] if definition.bases else None
    if not isinstance(base, ast.Name):
        return None
    local = any(isinstance(s, ast.ClassDef) and s.name == base.id for s in tree.body)
    full = f"{module}.{base.id}" if local else _imported_from(tree, module, base.id)
    return full if full and full.startswith("latentbench.") else None


def signature_names(target: str, key: str = "model") -> list[str]:
    """The parameter names of ``target`` (what a caller may give it; see :func:`target_parameters`)."""
    parameters = target_parameters(target, key)
    return parameters.names if parameters else []


@functools.lru_cache(maxsize=None)
def source_parameters(target: str, depth: int = 0) -> Parameters | None | bool:
    """The parameters of latentbench class or function ``target`` (``module.Name``) read from its
    source file; None when they cannot be told (an ``__init__`` inherited from another package),
    False when there is no such class or function."""
    module, _, name = target.rpartition(".")
    tree = _module_tree(module) if module.startswith("latentbench") else None
    if tree is None or depth > 8:
        return None if depth else False
    definition = next((s for s in tree.body if isinstance(s, (ast.ClassDef, ast.FunctionDef)) and s.name == name), None)
    if definition is None:
        imported = _imported_from(tree, module, name)
        return source_parameters(imported, depth + 1) if imported else (None if depth else False)
    aliases = _aliases(module)
    if isinstance(definition, ast.FunctionDef):
        return _function_parameters(definition, skip_self=False, aliases=aliases)
    init = next((s for s in definition.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
    base = _base_class(tree, module, definition)
    if init is None:  # inherited: the base's (single inheritance), unknown when it is another package's
        return source_parameters(base, depth + 1) if base else (None if definition.bases else Parameters([], False))
    own = _function_parameters(init, skip_self=True, aliases=aliases)
    if not own.accepts_kwargs or base is None:
        return own
    inherited = source_parameters(base, depth + 1)  # **kwargs go on to the base class
    if not inherited:
        return own
    return Parameters([*own.names, *(n for n in inherited.names if n not in own.names)], inherited.accepts_kwargs,
                      {**inherited.hints, **own.hints})


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
