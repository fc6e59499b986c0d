"""latentbench: a research harness for image autoencoders and latent diffusion.

The Python API (:mod:`latentbench.api`), for notebooks::

    import latentbench as lb
    metrics = lb.train(["model=pca", "data=digits"])  # as `latentbench train model=pca data=digits`
    lb.runs("outputs")                                # a pandas DataFrame: one row per run
    model = lb.load(metrics.run_dir)                  # the run's trained LightningModule

``train``, ``load`` and ``runs`` are imported on first use, so that ``import latentbench`` (and
``latentbench --help``) imports no torch, Lightning, Hydra or pandas.

``latentbench.train`` is also the module ``latentbench/train.py`` (``from latentbench.train import
train`` trains a composed config). Rather than two objects fighting over one attribute, it is one
object: the module, made callable as :func:`latentbench.api.train`. Whoever imports the module
first (this package's lazy lookup, ``import latentbench.train``, ``from latentbench.train import
...``), the import system binds it here through ``__setattr__`` below, which makes it callable; so
``latentbench.train(overrides=[...])`` runs the API, and ``latentbench.train.train(cfg)``,
``import latentbench.train as t`` and patching ``latentbench.train.<name>`` keep their meaning.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

__version__ = "0.1.0"
__all__ = ["__version__", "api", "load", "runs", "train"]

API_FUNCTIONS = ("load", "runs")  # plain lazy names; ``train`` is the callable module below


class TrainModule(ModuleType):
    """The class of the module ``latentbench.train``: calling it is :func:`latentbench.api.train`."""

    def __call__(self, overrides=(), run_dir=None):
        """``latentbench.train(overrides=[...], run_dir=None)``: see :func:`latentbench.api.train`."""
        return importlib.import_module(f"{__name__}.api").train(overrides, run_dir=run_dir)


class Package(ModuleType):
    """The class of this package's module object: lazy API names, a callable ``train`` module."""

    def __getattr__(self, name: str):
        if name in API_FUNCTIONS:
            return getattr(importlib.import_module(f"{__name__}.api"), name)
        if name in ("train", "api"):
            return importlib.import_module(f"{__name__}.{name}")  # the import binds it via __setattr__
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name == "train" and type(value) is ModuleType and value.__name__ == f"{__name__}.train":
            value.__class__ = TrainModule
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *__all__})


sys.modules[__name__].__class__ = Package
