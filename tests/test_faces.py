"""Faces load from the shared Olivetti file, an identity folder, and scikit-image's embedded LFW subset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latentbench.data.faces import FacesDataModule
from latentbench.errors import ConfigError
from latentbench.train import train
from tests.conftest import SHARED_DATA

OLIVETTI = SHARED_DATA / "olivetti" / "olivettifaces.mat"
needs_olivetti = pytest.mark.skipif(not OLIVETTI.is_file(), reason=f"shared Olivetti faces not found at {OLIVETTI}")


@needs_olivetti
def test_olivetti_from_the_shared_mat_file():
    module = FacesDataModule(source="olivetti", root=str(OLIVETTI), image_size=64, val_size=0.1)
    images, labels = module.read_all()
    assert images.shape == (400, 1, 64, 64) and images.dtype == np.uint8
    assert labels.tolist() == [i // 10 for i in range(400)]
    assert module.num_classes == 40
    from scipy.io import loadmat

    raw = loadmat(OLIVETTI)["faces"]
    assert np.array_equal(images[1, 0], raw[:, 1].reshape(64, 64).T)
    module.setup()
    assert sum(len(s) for s in module.splits.values()) == 400
    assert module.splits["train"].images.shape[1:] == (1, 64, 64)


@needs_olivetti
def test_olivetti_split_by_identity_keeps_people_apart():
    module = FacesDataModule(source="olivetti", root=str(OLIVETTI), image_size=32, split_by="identity", val_size=4, test_size=0.2)
    module.setup()
    people = {name: set(split.labels.tolist()) for name, split in module.splits.items()}
    assert len(people["test"]) == 8 and len(people["val"]) == 4 and len(people["train"]) == 28
    assert not people["test"] & people["train"] and not people["val"] & people["train"]
    assert len(module.splits["test"]) == 80


def write_identity_folder(root, sizes=((30, 36), (40, 40)), suffixes=(".pgm", ".png"), people=3, per_person=4):
    rng = np.random.default_rng(0)
    for person in range(people):
        folder = root / f"s{person + 1}"
        folder.mkdir(parents=True)
        for index in range(per_person):
            width, height = sizes[index % len(sizes)]
            mode = "L" if index % 2 == 0 else "RGB"
            shape = (height, width) if mode == "L" else (height, width, 3)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(folder / f"{index + 1}{suffixes[index % len(suffixes)]}")
    return root


def test_folder_of_identity_subfolders_with_mixed_sizes_and_modes(tmp_path, caplog):
    root = write_identity_folder(tmp_path / "orl")
    caplog.set_level("INFO")
    module = FacesDataModule(source="folder", root=str(root), image_size=16, color="rgb", val_size=2)
    images, labels = module.read_all()
    assert images.shape == (12, 3, 16, 16)
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert module.num_classes == 3
    assert "resized 12 images" in caplog.text and "converted image modes" in caplog.text
    grey = FacesDataModule(source="folder", root=str(root), image_size=16).read_all()[0]
    assert grey.shape == (12, 1, 16, 16)
    # the first image (a 30x36 grey PGM) is the resized file content
    expected = np.asarray(Image.open(root / "s1" / "1.pgm").resize((16, 16), Image.Resampling.BICUBIC))
    assert np.array_equal(grey[0, 0], expected)


def test_lfw_subset_is_the_offline_default():
    module = FacesDataModule(image_size=24)
    images, labels = module.read_all()
    assert images.shape == (100, 1, 24, 24)
    assert module.num_classes is None and set(labels.tolist()) == {0}
    assert 60 < images.mean() < 200  # faces, not blank


def test_bad_faces_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data.root: .*missing.mat does not exist \(expected the Olivetti"):
        FacesDataModule(source="olivetti", root=str(tmp_path / "missing.mat"))
    broken = tmp_path / "broken.mat"
    broken.write_bytes(b"MATLAB 5.0 but not really" * 4)
    with pytest.raises(ConfigError, match=r"broken.mat is not a readable MATLAB .mat file"):
        FacesDataModule(source="olivetti", root=str(broken)).read_all()
    from scipy.io import savemat

    other = tmp_path / "other.mat"
    savemat(other, {"pixels": np.zeros((4, 4), np.uint8)})
    with pytest.raises(ConfigError, match=r"other.mat has no 'faces' array \(keys: \['pixels'\]\)"):
        FacesDataModule(source="olivetti", root=str(other)).read_all()
    (tmp_path / "empty" / "s1").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"empty has no sub-folders with images"):
        FacesDataModule(source="folder", root=str(tmp_path / "empty"))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(flat / "a.png")
    with pytest.raises(ConfigError, match=r"it has images but no identity sub-folders"):
        FacesDataModule(source="folder", root=str(flat))
    corrupt = write_identity_folder(tmp_path / "corrupt", people=1, per_person=2)
    (corrupt / "s1" / "2.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"s1/2.png: cannot read as an image"):
        FacesDataModule(source="folder", root=str(corrupt)).read_all()
    with pytest.raises(ValueError, match="split_by: 'identity' needs identity labels"):
        FacesDataModule(split_by="identity")


def test_cli_trains_a_conv_autoencoder_on_an_identity_folder(cfg_factory, tmp_path):
    root = write_identity_folder(tmp_path / "faces", people=4, per_person=5)
    metrics = train(cfg_factory("model=ae_conv", "data=faces", "data.source=folder", f"data.root={root}",
                                "data.image_size=16", "data.val_size=2", "trainer.max_steps=2"))
    assert metrics["status"] == "finished" and np.isfinite(metrics["test/mse"])
    assert list((tmp_path / "images").glob("test_reconstructions_*.png"))


@needs_olivetti
def test_cli_denoises_olivetti_faces(cfg_factory, tmp_path):
    metrics = train(cfg_factory("model=dae", "corruption=gaussian", "corruption.sigma=0.2", "data=faces",
                                "data.source=olivetti", f"data.root={OLIVETTI}", "data.image_size=32", "trainer.max_steps=3"))
    assert metrics["status"] == "finished"
    assert torch.isfinite(torch.tensor(metrics["test/ssim"]))
