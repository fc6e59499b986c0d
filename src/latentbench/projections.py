"""Codes ``(N, D)`` -> 2-D points (PCA, t-SNE, UMAP), and 2-D points + labels -> a scatter picture.

Shared by the EmbeddingPlot callback, ``latentbench embeddings`` and ``latentbench report --codes``.
``umap-learn`` is optional: ``umap_installed()`` says whether ``project(..., "umap")`` can run.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import numpy as np

Method = Literal["pca", "tsne", "umap"]
METHODS = ("pca", "tsne", "umap")


def umap_installed() -> bool:
    return importlib.util.find_spec("umap") is not None


def project(codes: np.ndarray, method: Method = "pca", seed: int = 0) -> np.ndarray:
    """``(N, D)`` codes -> ``(N, 2)`` by ``method``; codes with D <= 2 are shown as they are (D = 1: y = 0).

    ``pca``: first two principal components; ``tsne``: scikit-learn t-SNE (PCA init);
    ``umap``: umap-learn (raises ImportError when it is not installed).
    """
    if codes.shape[1] <= 2:
        return codes if codes.shape[1] == 2 else np.concatenate([codes, np.zeros_like(codes)], axis=1)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(codes)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(codes) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(codes)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(codes)
    raise ValueError(f"methods: {method!r} is not allowed (allowed: {', '.join(METHODS)})")


def pca_2d(train_codes: np.ndarray, test_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets in the first two principal components of the train codes (as they are when D <= 2)."""
    if train_codes.shape[1] <= 2:
        return train_codes, test_codes
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(train_codes)
    return pca.transform(train_codes), pca.transform(test_codes)


def scatter_image(panels: list[tuple[np.ndarray, np.ndarray, str]], ticks: bool = True, robust_limits: bool = False) -> np.ndarray:
    """Scatter plots ``[(points (N, 2), labels (N,), title), ...]`` side by side (5 x 5 inches each,
    100 dpi), coloured by label on one colour scale (``tab10``, with a colour bar of the labels when
    there are at most 20), as an ``(H, W, 3)`` uint8 picture; ``ticks=False`` hides the axis ticks;
    ``robust_limits`` frames the central 98 % of the points on each axis (a few far-out codes, as
    unbounded ReLU codes have, would otherwise squeeze the rest into a corner)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.unique(np.concatenate([np.asarray(panel[1]) for panel in panels]))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), dpi=100, squeeze=False, layout="constrained")
    for axis, (points, panel_labels, title) in zip(axes[0], panels):
        scatter = axis.scatter(points[:, 0], points[:, 1], c=panel_labels, cmap="tab10", s=4,
                               vmin=labels.min() - 0.5, vmax=labels.max() + 0.5)
        axis.set_title(title)
        if robust_limits and len(points) > 1:
            low, high = np.percentile(points, [1, 99], axis=0)
            margin = np.maximum(0.05 * (high - low), 1e-6)
            axis.set_xlim(low[0] - margin[0], high[0] + margin[0])
            axis.set_ylim(low[1] - margin[1], high[1] + margin[1])
        if not ticks:
            axis.set_xticks([])
            axis.set_yticks([])
    if len(labels) <= 20:
        figure.colorbar(scatter, ax=list(axes[0]), ticks=labels)
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return image
