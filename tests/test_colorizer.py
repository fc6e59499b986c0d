"""Colorizer: exact colour round trips, merge models keep the input luminance, it learns colour on coco-mini."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kornia.color import rgb_to_grayscale, rgb_to_lab, rgb_to_ycbcr

from latentbench.corruptions import Grayscale
from latentbench.data.images import ImagesDataModule
from latentbench.errors import ConfigError
from latentbench.models.colorizer import Colorizer, merge_luminance, split_luminance
from latentbench.train import train
from tests.conftest import SHARED_DATA

COCO_MINI = SHARED_DATA / "coco-mini"
needs_coco = pytest.mark.skipif(not (COCO_MINI / "train-00000.tar").is_file(), reason=f"shared coco-mini not found at {COCO_MINI}")


@pytest.mark.parametrize("color_space, tolerance", [("ycbcr", 1e-5), ("lab", 1e-4)])
def test_round_trip_conversions_are_exact(color_space, tolerance):
    rgb = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    luminance, chroma = split_luminance(rgb, color_space)
    assert luminance.shape == (4, 1, 16, 16) and chroma.shape == (4, 2, 16, 16)
    assert 0.0 <= luminance.min() and luminance.max() <= 1.0
    assert chroma.abs().max() <= 1.0  # normalised: L/100, ab/110 (lab); Cb, Cr in [0, 1] (ycbcr)
    assert (merge_luminance(luminance, chroma, color_space) - rgb).abs().max() < tolerance


@pytest.mark.parametrize("color_space", ["ycbcr", "lab"])
def test_merge_models_output_the_input_luminance(color_space):
    torch.manual_seed(0)
    model = Colorizer(input_shape=[3, 16, 16], color_space=color_space, channels=[8, 16])
    with torch.no_grad():  # a random head, so that the predicted chroma is not neutral
        model.head.weight.normal_(0.0, 0.5)
        model.head.bias.normal_(0.0, 0.2)
    rgb = torch.rand(4, 3, 16, 16)
    grey = Grayscale()(rgb)
    with torch.no_grad():
        output = model(grey)
    assert output.shape == (4, 3, 16, 16)
    assert output.std(dim=1).mean() > 0.01  # coloured, not grey
    # pixels whose merged colour lies inside the sRGB gamut (outside it, clipping changes the luminance)
    in_gamut = ((output > 1e-4) & (output < 1 - 1e-4)).all(dim=1, keepdim=True)
    assert in_gamut.float().mean() > 0.5
    if color_space == "ycbcr":  # Y of the output is the grey input (Rec. 601 luma = Y)
        output_luminance, input_luminance, tolerance = rgb_to_ycbcr(output)[:, :1], grey, 1e-5
    else:  # L of the output is L of the grey input
        output_luminance = rgb_to_lab(output)[:, :1]
        input_luminance, tolerance = rgb_to_lab(grey.expand(-1, 3, -1, -1))[:, :1], 1e-2  # L in [0, 100]
    difference = (output_luminance - input_luminance).abs()
    assert difference[in_gamut].max() < tolerance


def test_rgb_colorizer_predicts_three_channels_and_takes_rgb_input_too():
    model = Colorizer(input_shape=[3, 20, 20], color_space="rgb", channels=[8, 16, 32])
    assert model(torch.rand(2, 1, 20, 20)).shape == (2, 3, 20, 20)
    assert model(torch.rand(2, 3, 20, 20)).shape == (2, 3, 20, 20)  # reduced to grey first
    assert model.encode(torch.rand(2, 1, 20, 20)).shape == (2, 32)


def test_colorizer_on_one_channel_data_fails_before_training(cfg_factory, tmp_path):
    with pytest.raises(ConfigError, match=r"^model.color_space: the colorizer needs RGB data, the data gives 1 channel"):
        train(cfg_factory("model=colorizer", "data=digits"))
    assert not (tmp_path / "checkpoints").exists()


def grey_baseline_mse(module: ImagesDataModule) -> float:
    """Test MSE of the constant-chroma baseline: the grey image itself (zero chroma), in RGB."""
    split = module.splits["test"]
    batch = split[list(range(len(split)))]
    return float(((batch["input"].expand(-1, 3, -1, -1) - batch["image"]) ** 2).mean())


@needs_coco
@pytest.mark.parametrize("color_space", ["ycbcr", "lab"])
def test_colorizer_beats_the_grey_baseline_on_coco_mini(cfg_factory, tmp_path, color_space):
    overrides = ["model=colorizer", f"model.color_space={color_space}", "model.channels=[16,32,64]", "data=images",
                 f"data.root={COCO_MINI}", "data.image_size=32", "trainer.max_epochs=6", "callbacks=none"]
    metrics = train(cfg_factory(*overrides))
    module = ImagesDataModule(root=str(COCO_MINI), image_size=32, corruption=Grayscale())
    module.setup()
    baseline = grey_baseline_mse(module)
    assert 0.004 < baseline < 0.02
    assert metrics["test/mse"] < baseline, (metrics["test/mse"], baseline)


@needs_coco
def test_images_data_module_reads_webdataset_shards_and_flips_only_training(tmp_path):
    module = ImagesDataModule(root=str(COCO_MINI), image_size=24, val_size=8)
    module.setup()
    assert {k: len(v) for k, v in module.splits.items()} == {"train": 72, "val": 8, "test": 79}
    assert module.splits["train"].images.shape[1:] == (3, 24, 24)
    torch.manual_seed(0)
    train_split = module.splits["train"]
    flipped = [torch.equal(train_split[[0]]["image"], train_split.images[[0]].float().flip(-1) / 255) for _ in range(20)]
    assert 0 < sum(flipped) < 20
    test_split = module.splits["test"]
    assert all(torch.equal(test_split[[0]]["image"], test_split.images[[0]].float() / 255) for _ in range(5))


def test_images_from_a_folder_and_a_clear_error_for_an_empty_one(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(10):
        Image.fromarray(rng.integers(0, 256, (20 + index, 30, 3), dtype=np.uint8)).save(tmp_path / f"{index}.jpg")
    module = ImagesDataModule(source="folder", root=str(tmp_path), image_size=16, val_size=2)
    module.setup()
    assert sum(len(s) for s in module.splits.values()) == 10
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data.root: .*empty has no images"):
        ImagesDataModule(source="folder", root=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"has no WebDataset shards"):
        ImagesDataModule(source="webdataset", root=str(tmp_path / "empty"))


@needs_coco
def test_cli_colorizer_logs_grey_output_original_grids(cfg_factory, tmp_path):
    metrics = train(cfg_factory("model=colorizer", "model.color_space=lab", "model.channels=[8,16]", "data=images",
                                f"data.root={COCO_MINI}", "data.image_size=16", "trainer.max_steps=2"))
    for key in ("test/recon_sse", "test/mse", "test/psnr", "test/ssim"):
        assert np.isfinite(metrics[key])
    assert "test/knn_acc" not in metrics  # coco-mini has no classes: a kNN accuracy would be a meaningless 1.0
    from PIL import Image

    grid = np.asarray(Image.open(sorted((tmp_path / "images").glob("test_reconstructions_*.png"))[-1]))
    # three rows: grey input (R == G == B), output, original; 16 px images blown up to 32, 1 px padding
    assert grid.shape[0] == 3 * 32 + 4
    top = grid[1:33, 1:33].astype(int)
    assert (top[..., 0] == top[..., 1]).all() and (top[..., 1] == top[..., 2]).all()
    bottom = grid[67:99, 1:33].astype(int)
    assert np.abs(bottom[..., 0] - bottom[..., 2]).mean() > 1


@needs_coco
def test_report_side_by_side_puts_each_colorizer_beside_grey_input_and_original(tmp_path):
    """The lecture's figure: grey | one column per model | original, the same test images for every model."""
    from PIL import Image

    from latentbench.comparison import first_test_batch, model_outputs
    from latentbench.report import main as report_main
    from tests.conftest import FAST, run_cli

    root = tmp_path / "runs"
    for space in ("rgb", "lab"):  # as a user makes them: the CLI records each run's overrides
        done = run_cli("train", *FAST, "model=colorizer", f"model.color_space={space}", "model.channels=[8,16]", "data=images",
                       f"data.root={COCO_MINI}", "data.image_size=16", "trainer.max_steps=3", "callbacks=none",
                       f"hydra.run.dir={root / space}")
        assert done.returncode == 0, done.stderr[-2000:]
    batch, shape = first_test_batch(root / "rgb", 4)
    assert shape == (3, 16, 16) and batch["image"].shape == (4, 3, 16, 16) and batch["input"].shape == (4, 1, 16, 16)  # grey in
    assert torch.equal(first_test_batch(root / "lab", 4)[0]["image"], batch["image"])  # the same test images
    rgb, lab = (model_outputs(root / space, batch["input"], shape) for space in ("rgb", "lab"))
    assert rgb.shape == lab.shape == (4, 3, 16, 16) and not torch.allclose(rgb, lab)
    # the merge model keeps the grey image's luminance: its output turned grey is the input
    assert torch.allclose(rgb_to_grayscale(lab), batch["input"], atol=0.02)
    assert not torch.allclose(rgb_to_grayscale(rgb), batch["input"], atol=0.02)  # the vanilla model must learn it

    out = tmp_path / "report"
    assert report_main([str(root), "--group-by", "model.color_space", "--metrics", "test/psnr", "--side-by-side", "4",
                        "--format", "md", "--out", str(out)]) == 0
    with Image.open(out / "side_by_side.png") as figure:
        assert figure.size == (4 * 160, 4 * 160)  # input, lab, rgb, original; four images down
    with pytest.raises(ConfigError, match=r"^report --side-by-side: expected a positive number of images, got 0$"):
        report_main([str(root), "--side-by-side", "0", "--format", "md", "--out", str(out)])


@pytest.mark.slow  # ~40 s: a CLIP and three colorizers
@needs_coco
def test_colorization_experiment_quick_mode_writes_table_with_fid_and_the_lecture_figure(tmp_path):
    import csv

    from PIL import Image

    from latentbench.cli import main as cli_main

    out = tmp_path / "colorization"
    assert cli_main(["experiment", "colorization", "--quick", "--out", str(out), f"paths.data_dir={SHARED_DATA}"]) == 0
    assert (out / "features" / "clip" / "metrics.json").is_file()  # where metrics.fid.checkpoint finds it
    with (out / "report" / "table.csv").open() as handle:
        rows = {r["model.color_space"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"rgb", "ycbcr", "lab"}
    for row in rows.values():
        assert float(row["test/fid_domain mean"]) > 0 and 10 < float(row["test/psnr mean"]) < 40
    with Image.open(out / "report" / "side_by_side.png") as figure:
        assert figure.size == (5 * 160, 8 * 160)  # grey | rgb | ycbcr | lab | original, 8 test images
