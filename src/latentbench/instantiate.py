"""Build objects from config nodes, turning constructor errors into one-line ConfigErrors."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

import re

from latentbench.errors import ConfigError, did_you_mean, with_key_prefix


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``; a bad value becomes ``ConfigError("<key>.<arg>: ...")``."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__ or error
        if isinstance(cause, ConfigError):
            raise ConfigError(str(cause)) from None
        if isinstance(cause, (ValueError, TypeError, FileNotFoundError)):
            raise unknown_argument_error(cause, node, key) or with_key_prefix(cause, key) from None
        raise
    except ConfigError:
        raise
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise unknown_argument_error(error, node, key) or with_key_prefix(error, key) from None


def unknown_argument_error(error: BaseException, node: DictConfig, key: str) -> ConfigError | None:
    """``model.latent_dimm: unknown key for AutoEncoder (did you mean latent_dim?)`` from the TypeError
    of a constructor that passes ``**kwargs`` on to a base class which does not take the key."""
    match = re.search(r"unexpected keyword argument '([^']+)'", str(error))
    if not isinstance(error, TypeError) or not match:
        return None
    import inspect

    from hydra.utils import get_object

    target = get_object(node._target_)
    names: set[str] = set()
    for cls in inspect.getmro(target) if inspect.isclass(target) else [target]:
        init = cls.__init__ if inspect.isclass(target) else cls
        try:
            names |= {p for p in inspect.signature(init).parameters if p not in ("self", "args", "kwargs")}
        except (TypeError, ValueError):
            continue
    name = match.group(1)
    return ConfigError(f"{key}.{name}: unknown key for {node._target_}{did_you_mean(name, sorted(names))}")
