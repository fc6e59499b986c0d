"""Build objects from config nodes, turning constructor errors into one-line ConfigErrors."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from latentbench.errors import ConfigError, with_key_prefix


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``; a bad value becomes ``ConfigError("<key>.<arg>: ...")``."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__ or error
        if isinstance(cause, ConfigError):
            raise ConfigError(str(cause)) from None
        if isinstance(cause, (ValueError, TypeError, FileNotFoundError)):
            raise with_key_prefix(cause, key) from None
        raise
    except ConfigError:
        raise
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise with_key_prefix(error, key) from None
