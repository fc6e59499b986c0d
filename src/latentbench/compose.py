"""Where the configs live, composing a run's config, and checking overrides before Hydra runs.

``compose_run_config`` composes a run's config from Python (notebooks, tests, benchmarks), as
``latentbench train`` would; ``preflight`` composes once before Hydra runs, so that an unknown
choice or key is one line.
"""

from __future__ import annotations

import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from latentbench.config_check import check_config
from latentbench.errors import ConfigError, did_you_mean, first_line


def conf_dir() -> Path:
    """``conf/`` shipped inside the package (wheel install) or beside ``src/`` (editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise ConfigError(f"conf/train.yaml not found next to {here}")


HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--multirun", "-m",
               "--shell-completion", "-sc", "--resolve", "--package", "-p", "--run", "-r", "--version")


def preflight(overrides: list[str]) -> None:
    """Compose the config once before Hydra runs, so that an unknown choice or key is one line."""
    if any(arg.split("=")[0] in HYDRA_FLAGS for arg in overrides):
        return
    from hydra.errors import HydraException, MissingConfigException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as error:
        raise ConfigError(unknown_choice_message(error, overrides)) from None
    except (HydraException, ValueError) as error:
        raise ConfigError(override_error_message(error, overrides)) from None
    # keys and types of latentbench's own targets too, read from source: still no torch import
    with open_dict(cfg):
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)  # ${hydra:...} interpolations resolve as in the job
    with open_dict(cfg):
        del cfg.hydra
    check_config(cfg, without_imports=True)


def unknown_choice_message(error, overrides: list[str]) -> str:
    """``model=foo: unknown choice (available: ae, pca)`` from Hydra's multi-line message."""
    text = str(error)
    for override in overrides:
        group, _, choice = override.lstrip("+~").partition("=")
        if f"'{group}/{choice}'" in text:
            available = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
            return f"{group}={choice}: unknown choice{did_you_mean(choice, available)} (available: {', '.join(available)})"
    return first_line(error)


def closest_key_hint(key: str, overrides: list[str]) -> str:
    """`` (did you mean trainer.max_epochs?)`` for an override of a key the config does not have."""
    from omegaconf import OmegaConf

    parent, _, name = key.rpartition(".")
    others = [o for o in overrides if o.lstrip("+~").partition("=")[0] != key]
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="train", overrides=others)
    except Exception:  # noqa: BLE001 (another override is broken too: no hint then)
        return ""
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return ""
    hint = did_you_mean(name, list(node.keys()))
    return hint.replace("did you mean ", f"did you mean {parent}.") if parent and hint else hint


def override_error_message(error: Exception, overrides: list[str] = ()) -> str:
    """One line from Hydra's message about an override it could not apply (with the closest existing
    key for a misspelled one)."""
    text = f"{error} {error.__cause__ or ''}"
    key = re.search(r"Could not override '([^']+)'", text)
    if key and "not in struct" in text:
        hint = closest_key_hint(key.group(1), list(overrides))
        return f"{key.group(1)}: no such key in the config{hint} (to add a new key, write +{key.group(1)}=...)"
    if key:
        return f"{key.group(1)}: {first_line(error.__cause__ or error) if error.__cause__ else 'cannot override'}"
    return first_line(error)



def compose_run_config(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """``conf/train.yaml`` + overrides, with the run writing into ``output_dir``.

    Sets Hydra's runtime config too, so that ``${hydra:...}`` interpolations resolve and
    ``latentbench.train.train(cfg)`` runs exactly as under the CLI.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg
