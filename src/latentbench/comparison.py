"""Several trained models' outputs on the same test images, side by side (``latentbench report --side-by-side N``).

One row per test image, one column per model between the model input and the original: the
lecture's colorization figure (grey | vanilla | YCbCr | LAB | original), or noisy | denoisers | clean.
The images are the first ``N`` test images of the first run's data config (with its corruption),
so every model sees exactly the same inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latentbench.errors import ConfigError


def first_test_batch(run_path: Path, count: int) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """The first ``count`` test images of a run's data, as its test loader gives them (``image``,
    ``input`` when the run corrupts its inputs), and the data's ``(C, H, W)``."""
    from latentbench.checkpoints import checkpoint_of
    from latentbench.evaluate import eval_config
    from latentbench.instantiate import build
    from latentbench.train import corruption_argument

    cfg, _ = eval_config(checkpoint_of(run_path), [f"data.batch_size={count}"])
    datamodule = build(cfg.data, "data", **corruption_argument(cfg))
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    return {key: batch[key][:count] for key in ("image", "input") if key in batch}, tuple(datamodule.image_shape)


@torch.no_grad()
def model_outputs(run_path: Path, inputs: torch.Tensor, image_shape: tuple[int, ...]) -> torch.Tensor:
    """A run's trained model (its tested checkpoint) on ``inputs``: ``(N, C, H, W)`` in [0, 1]."""
    from latentbench.checkpoints import load_model

    model = load_model(run_path)
    output = model(inputs.to(model.device, model.dtype)).float().cpu()
    if output.numel() != inputs.shape[0] * int(np.prod(image_shape)):
        raise ConfigError(f"report --side-by-side: {run_path} gives outputs of shape {tuple(output.shape)}, "
                          f"not images of shape {image_shape} (compare reconstruction models on the same data)")
    return output.reshape(-1, *image_shape).clamp(0, 1)


def side_by_side(columns: list[tuple[str, torch.Tensor]], path: Path) -> Path:
    """Save ``[(title, images (N, C, H, W) in [0, 1]), ...]`` as an N-row grid with one titled column each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(len(images) for _, images in columns)
    figure, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows), squeeze=False,
                                layout="constrained")
    for col, (title, images) in enumerate(columns):
        axes[0, col].set_title(title, fontsize=9)
        for row in range(rows):
            picture = images[row].permute(1, 2, 0).numpy()
            grey = picture.shape[-1] == 1
            axes[row, col].imshow(picture[..., 0] if grey else picture, cmap="gray" if grey else None, vmin=0, vmax=1)
            axes[row, col].axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def compare_runs(runs: list[tuple[str, Path]], count: int, path: Path) -> Path:
    """``[(column title, run directory), ...]`` -> the side-by-side figure at ``path``: the model input
    (``input``, the corrupted copy; absent without corruption), each run's output, the original."""
    if count <= 0:
        raise ConfigError(f"report --side-by-side: expected a positive number of images, got {count}")
    batch, shape = first_test_batch(runs[0][1], count)
    inputs = batch.get("input", batch["image"])
    columns = [("input", inputs.reshape(len(inputs), -1, *shape[-2:]))]  # flat or grey inputs as images
    columns += [(title, model_outputs(run_path, inputs, shape)) for title, run_path in runs]
    columns.append(("original", batch["image"].reshape(-1, *shape)))
    return side_by_side(columns, path)
