"""Override quoting, in one place: values made acceptable to Hydra's override grammar.

W&B agents pass ``key=value`` with Python's ``str``; group choices that look like numbers
(``precision=32``) must be quoted; sweep files turn into Hydra values.
"""

from __future__ import annotations

import re
from typing import Any

from latentbench.compose import conf_dir

SAFE_VALUE = re.compile(r"[A-Za-z0-9_./:+-]+")
HYDRA_KEYWORDS = {"true", "false", "null", "none", "nan", "inf", "-inf"}


def hydra_value(value: Any) -> str:
    """A Python value as Hydra override syntax: ``None -> null``, ``'a b' -> 'a b'`` (quoted), lists as ``[a,b]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if SAFE_VALUE.fullmatch(text) and text.lower() not in HYDRA_KEYWORDS and not re.fullmatch(r"-?[\d.]+(e-?\d+)?", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def unquoted(value: str) -> str:
    """A Hydra-quoted override value (``'.../3_seed=1,lr=0.1'``: a multirun job's folder, which the
    command line quotes for Hydra) as the plain string it stands for; other values as they are."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            return str(OverridesParser.create().parse_override(f"key={value}").value())
        except Exception:  # noqa: BLE001 (Hydra's lexer/parser errors): leave it to the path check
            return value
    return value


def safe_override(arg: str) -> str:
    """One ``key=value`` from a W&B agent made acceptable to Hydra as a single value.

    W&B writes ``f"{key}={value}"`` with Python's ``str``: ``None`` arrives as ``None``, and a value
    with a comma, a quote or an equals sign would be read by Hydra as a sweep or be refused. Values
    Hydra parses as one plain value are kept; ``None`` becomes ``null``; anything else is quoted.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key, sep, value = arg.partition("=")
    if not sep or arg.startswith("-") or not re.fullmatch(r"[+~]{0,2}[A-Za-z_][\w./@-]*", key):
        return arg
    if value == "None":
        return f"{key}=null"
    try:
        override = OverridesParser.create().parse_overrides([arg])[0]
        if not override.is_sweep_override() and not (" " in value and value[:1] not in "'\"[{"):
            return arg
    except Exception:  # Hydra's lexer/parser errors
        pass
    if value[:1] in "'\"" and value[-1:] == value[:1]:  # quoted already, but refused: leave Hydra's error as it is
        return arg
    return f"{key}={hydra_value(value)}"


def safe_overrides(args: list[str]) -> list[str]:
    """``safe_override`` on every argument of a single run (a multirun's ``a,b`` stays a sweep)."""
    if any(a in ("-m", "--multirun") or a.startswith("hparams_search=") for a in args):
        return args
    return [safe_override(a) for a in args]


def quote_numeric_choices(args: list[str]) -> list[str]:
    """``precision=32`` -> ``precision='32'``: Hydra parses 32 as an int, which it refuses as a group choice."""
    quoted = []
    for arg in args:
        group, sep, choice = arg.partition("=")
        if sep and choice.isdigit() and (conf_dir() / group / f"{choice}.yaml").is_file():
            arg = f"{group}='{choice}'"
        quoted.append(arg)
    return quoted
