"""What a training run imports on its way, imported once in the fork server (``tests/forked.py``).

Most of the project imports lazily (inside functions), so a forked child would otherwise still
spend ~20 s importing models, data modules, metrics, scikit-learn, matplotlib and W&B. Imports
only: nothing here may start a thread or touch a device, since every child is a fork of this.
"""

import matplotlib

matplotlib.use("Agg")

import datasets  # noqa: E402,F401
import hydra._internal.utils  # noqa: E402,F401
import matplotlib.pyplot  # noqa: E402,F401
import open_clip  # noqa: E402,F401
import sklearn.datasets  # noqa: E402,F401
import sklearn.decomposition  # noqa: E402,F401
import sklearn.linear_model  # noqa: E402,F401
import sklearn.neighbors  # noqa: E402,F401
import torchmetrics.image  # noqa: E402,F401
import wandb  # noqa: E402,F401
from hydra.core.plugins import Plugins  # noqa: E402

import latentbench.callbacks  # noqa: E402,F401
import latentbench.data.digits  # noqa: E402,F401
import latentbench.data.mnist  # noqa: E402,F401
import latentbench.evaluation.embeddings  # noqa: E402,F401
import latentbench.evaluation.fid  # noqa: E402,F401
import latentbench.evaluate  # noqa: E402,F401
import latentbench.models.ae  # noqa: E402,F401
import latentbench.models.pca  # noqa: E402,F401
import latentbench.report  # noqa: E402,F401
import latentbench.resume  # noqa: E402,F401
import latentbench.sweep  # noqa: E402,F401

Plugins.instance()  # scans hydra_plugins (the Optuna sweeper, the submitit launcher) once
