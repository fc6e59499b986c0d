"""Embedding views of a model's codes: kNN accuracy, linear probe, a projector table with thumbnails,
and the side-by-side figure of two runs (``latentbench embeddings``). The 2-D maps (PCA, t-SNE,
optional UMAP) and scatter pictures live in ``latentbench.projections``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentbench.projections import METHODS, Method, pca_2d, project, scatter_image, umap_installed  # noqa: F401 (pca_2d: the callbacks')

log = logging.getLogger(__name__)


def knn_accuracy(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray, test_labels: np.ndarray,
                 neighbors: int = 5) -> float:
    """Accuracy of a k-nearest-neighbour classifier fitted on train codes, scored on test codes."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(neighbors, len(train_codes)))
    return float(knn.fit(train_codes, train_labels).score(test_codes, test_labels))


def linear_probe_error(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray, test_labels: np.ndarray,
                       max_iter: int = 200) -> float:
    """Test error in % of a linear probe: scikit-learn ``StandardScaler`` + ``LogisticRegression``
    fitted on the train codes ``(N, D)`` and labels ``(N,)``, scored on the test codes ``(M, D)``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():  # a probe capped at max_iter is the documented budget, not a fault
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        probe.fit(train_codes, train_labels)
    return 100.0 * (1.0 - float(probe.score(test_codes, test_labels)))


@torch.no_grad()
def encode_split(model: torch.nn.Module, split, count: int, batch_size: int = 256,
                 key: str = "input") -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """``(codes (N, D), labels (N,), images (N, ...))`` of the first ``count`` items of a data split.

    ``key="input"`` encodes what the model sees (the corrupted ``input`` when the data adds one, else
    the clean ``image``); ``key="image"`` always encodes the clean images.
    """
    codes, labels, images = [], [], []
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    device, dtype = (tensors[0].device, tensors[0].dtype) if tensors else (torch.device("cpu"), torch.float32)
    for start in range(0, min(count, len(split)), batch_size):
        batch = split[list(range(start, min(start + batch_size, count, len(split))))]
        x = batch.get(key, batch["image"]).to(device=device, dtype=dtype)  # bf16-true models take bf16
        codes.append(model.encode(x).float().cpu())
        labels.append(batch["label"].cpu())
        images.append(batch["image"].cpu())
    return torch.cat(codes).numpy(), torch.cat(labels).numpy(), torch.cat(images)


def thumbnail(image: torch.Tensor, shape: tuple[int, int, int], size: int = 32) -> np.ndarray:
    """One image (any layout of ``shape``'s pixels) as an ``(size, size, 3)`` uint8 thumbnail."""
    picture = image.detach().float().cpu().reshape(1, *shape).clamp(0, 1)
    picture = torch.nn.functional.interpolate(picture, size=(size, size), mode="nearest")[0]
    if picture.shape[0] == 1:
        picture = picture.expand(3, -1, -1)
    return (picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def log_projector_table(loggers: list, output_dir: str | Path, key: str, codes: np.ndarray, labels: np.ndarray,
                        thumbnails: list[np.ndarray]) -> None:
    """A table ``(label, thumbnail, z0..z{D-1})`` for W&B's embedding projector.

    To W&B as a ``wandb.Table`` with ``wandb.Image`` thumbnails when a WandbLogger is active; else
    ``output_dir/tables/<key>.csv`` whose ``thumbnail`` column names PNGs in ``tables/<key>_thumbnails/``.
    """
    from latentbench.tracking import wandb_loggers

    columns = ["label", "thumbnail", *(f"z{i}" for i in range(codes.shape[1]))]
    rows_n = len(thumbnails)
    wandb = wandb_loggers(loggers)
    if wandb:
        import wandb as wandb_module

        rows = [[int(labels[i]), wandb_module.Image(thumbnails[i]), *map(float, codes[i])] for i in range(rows_n)]
        for logger in wandb:
            logger.experiment.log({key: wandb_module.Table(columns=columns, data=rows)})
        return
    import csv

    from PIL import Image

    name = key.replace("/", "_")
    folder = Path(output_dir) / "tables" / f"{name}_thumbnails"
    folder.mkdir(parents=True, exist_ok=True)
    with (Path(output_dir) / "tables" / f"{name}.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i in range(rows_n):
            path = folder / f"{i:05d}.png"
            Image.fromarray(thumbnails[i]).save(path)
            writer.writerow([int(labels[i]), str(path.relative_to(output_dir)), *map(float, codes[i])])


# -- latentbench embeddings <run A> <run B> ---------------------------------------------------------

def run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run was tested with (``metrics.json``'s ``checkpoint``), else ``checkpoints/last.ckpt``."""
    from latentbench.run_dir import RunDir, RunDirError

    checkpoint = RunDir(run_dir).tested_checkpoint()
    if checkpoint is None:
        raise RunDirError(f"{run_dir}: no checkpoint found (expected metrics.json's checkpoint or checkpoints/*.ckpt)")
    return checkpoint


def load_run(run_dir: str | Path) -> tuple[Any, Any, Any]:
    """``(model, datamodule, cfg)`` of a finished run directory, the model loaded from its checkpoint."""
    from hydra.utils import get_object, instantiate
    from omegaconf import OmegaConf

    from latentbench.errors import ConfigError

    run_dir = Path(run_dir)
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{run_dir}: not a latentbench run directory (no .hydra/config.yaml)")
    cfg = OmegaConf.load(config_file)
    checkpoint = run_checkpoint(run_dir)
    model_class = get_object(cfg.model._target_)
    try:
        model = model_class.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:
        from latentbench.errors import first_line

        raise ConfigError(f"{checkpoint}: cannot load as {cfg.model._target_} ({first_line(error)[:160]})") from None
    datamodule = instantiate(cfg.data)
    return model.eval(), datamodule, cfg


def compare_runs(run_dirs: list[str], out: str, max_points: int = 2000, method: Method = "pca") -> Path:
    """Draw the 2-D test codes of each run side by side (Hinton & Salakhutdinov 2006, Fig. 3) into ``out``."""
    from PIL import Image

    panels = []
    for run_dir in map(Path, run_dirs):
        model, datamodule, cfg = load_run(run_dir)
        datamodule.setup("test")
        codes, labels, _ = encode_split(model, datamodule.splits["test"], max_points)
        how = "codes" if codes.shape[1] <= 2 else f"{method.upper()} of {codes.shape[1]}-d codes"
        panels.append((project(codes, method), labels, f"{cfg.model._target_.rsplit('.', 1)[-1]} {run_dir.name}: {how}"))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scatter_image(panels, ticks=False)).save(path)
    return path


def main(args: list[str]) -> int:
    """``latentbench embeddings <run dir A> <run dir B> [--out file.png] [--max-points N] [--method pca|tsne|umap]``."""
    parser = argparse.ArgumentParser(prog="latentbench embeddings",
                                     description="side-by-side 2-D test codes of trained runs (e.g. PCA vs an AE with a 2-D bottleneck)")
    parser.add_argument("runs", nargs="+", help="run directories (outputs/<run name>)")
    parser.add_argument("--out", default="embeddings.png", help="output PNG (default: embeddings.png)")
    parser.add_argument("--max-points", type=int, default=2000, help="test images per run (default: 2000)")
    parser.add_argument("--method", choices=METHODS, default="pca", help="2-D map for codes larger than 2 (default: pca)")
    options = parser.parse_args(args)
    if options.method == "umap" and not umap_installed():
        from latentbench.errors import ConfigError

        raise ConfigError("--method umap: umap-learn is not installed (pip install umap-learn, or use pca / tsne)")
    path = compare_runs(options.runs, options.out, options.max_points, options.method)
    print(f"wrote {path}")
    return 0
