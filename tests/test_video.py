"""Video: moving-digits clips, real clips from files, the video LDM, denoising trajectories, video media and metrics."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from latentbench.data.moving_digits import DIRECTIONS, MovingDigitsDataModule, resize_digits
from latentbench.errors import ConfigError
from tests.conftest import MNIST_ROOT, needs_mnist

DIRECTION = "(?:up and left|up and right|down and left|down and right|up|down|left|right)"  # longest first
CAPTION = re.compile(rf"a (\d) moving ({DIRECTION}(?: then {DIRECTION})*)")


def moving_digits(**kwargs) -> MovingDigitsDataModule:
    options = dict(root=str(MNIST_ROOT), num_train=40, num_val=12, num_test=12, num_frames=8, batch_size=8)
    data = MovingDigitsDataModule(**{**options, **kwargs})
    data.setup()
    return data


def deduped(signs) -> list[int]:
    out: list[int] = []
    for sign in signs:
        if not out or out[-1] != sign:
            out.append(sign)
    return out


@needs_mnist
def test_clips_are_a_function_of_seed_split_and_index():
    first, again = moving_digits(), moving_digits(limit=5)
    assert torch.equal(first.splits["train"].images[:5], again.splits["train"].images)  # limit does not change a clip
    assert first.splits["train"].captions[:5] == again.splits["train"].captions
    other_seed = moving_digits(seed=1)
    assert not torch.equal(first.splits["train"].images, other_seed.splits["train"].images)
    # splits draw from different seeds and different source digits
    assert not torch.equal(first.splits["train"].images[:12], first.splits["val"].images)


@needs_mnist
def test_splits_draw_from_disjoint_source_digits():
    data = MovingDigitsDataModule(root=str(MNIST_ROOT), digit_size=28)
    pools = data.digit_pools()
    assert [len(pools[s][0]) for s in ("train", "val", "test")] == [55000, 5000, 10000]
    from latentbench.data.mnist import read_idx

    train = read_idx(MNIST_ROOT / "train-images-idx3-ubyte.gz")
    assert np.array_equal(pools["train"][0][-1], train[54999]) and np.array_equal(pools["val"][0][0], train[55000])
    test = read_idx(MNIST_ROOT / "t10k-images-idx3-ubyte.gz")
    assert np.array_equal(pools["test"][0][0], test[0])


@needs_mnist
def test_batches_have_a_frame_axis_and_frames_can_be_served_as_images():
    data = moving_digits(num_digits=[1, 2])
    assert data.input_shape == (8, 1, 32, 32) and data.image_shape == (1, 32, 32) and data.num_classes == 10 and data.has_captions
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (8, 8, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert batch["label"].shape == (8,) and batch["digit_labels"].shape == (8, 2) and len(batch["caption"]) == 8
    assert torch.equal(batch["label"], batch["digit_labels"][:, 0])
    assert batch["digit_positions"].shape == (8, 2, 8, 2)
    frames = moving_digits(frames_as_images=True)
    assert frames.input_shape == (1, 32, 32) and len(frames.splits["train"]) == 40 * 8
    still = next(iter(frames.val_dataloader()))
    assert still["image"].shape == (8, 1, 32, 32)
    clips = moving_digits()
    torch.testing.assert_close(still["image"], clips.splits["val"].images[0].float() / 255)  # the 8 frames of val clip 0
    assert still["caption"] == [clips.splits["val"].captions[0]] * 8


@needs_mnist
def test_captions_say_which_digits_move_which_way():
    data = moving_digits(num_digits=[1, 2], num_train=200)
    split = data.splits["train"]
    single = 0
    for index in range(len(split)):
        caption, labels = split.captions[index], split.extras["digit_labels"][index]
        parts = CAPTION.findall(caption)
        assert " and ".join(f"a {d} moving {m}" for d, m in parts) == caption, caption  # nothing else in it
        assert [int(d) for d, _ in parts] == [int(l) for l in labels if l >= 0]
        if len(parts) != 1:
            continue
        single += 1
        # the motion seen in the pixels: the digit's centroid, frame by frame (a lone digit always lies wholly inside)
        clip = split.images[index, :, 0].double()
        ys, xs = torch.meshgrid(torch.arange(32.0, dtype=torch.float64), torch.arange(32.0, dtype=torch.float64), indexing="ij")
        mass = clip.sum((1, 2))
        centroid = torch.stack([(clip * xs).sum((1, 2)) / mass, (clip * ys).sum((1, 2)) / mass], dim=1)
        steps = (centroid[1:] - centroid[:-1]).round(decimals=6)
        directions = [DIRECTIONS[name] for name in parts[0][1].split(" then ")]
        for axis in range(2):
            said = [d for d in deduped(v[axis] for v in directions) if d != 0]
            seen = deduped(int(torch.sign(s)) for s in steps[:, axis] if s != 0)
            assert seen == said, (caption, axis, steps[:, axis].tolist())
    assert single > 50


def test_hub_path_is_kept_and_names_data_root_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = MovingDigitsDataModule(root=None, num_train=4, num_val=2, num_test=2)
    with pytest.raises(ConfigError, match=r"^data\.root: null, so MNIST comes from the hub dataset 'ylecun/mnist'"):
        data.setup()


def test_bad_options_name_their_key(tmp_path):
    with pytest.raises(ValueError, match=r"^num_digits: 1, 2 or a list of them"):
        MovingDigitsDataModule(root=None, num_digits=3)
    with pytest.raises(ValueError, match=r"^speeds: pixels per frame, each in \[1, image_size - digit_size = 16\]"):
        MovingDigitsDataModule(root=None, speeds=[20])
    with pytest.raises(ConfigError, match=r"^data\.root: .* has no MNIST IDX files"):
        MovingDigitsDataModule(root=str(tmp_path))
    assert resize_digits(np.full((2, 28, 28), 200, dtype=np.uint8), 14).shape == (2, 14, 14)


# -- real clips from files ------------------------------------------------------------------------
def moving_square(frames: int, size: int = 24, start: int = 0) -> np.ndarray:
    """``(T, size, size)`` uint8: a white 6x6 square moving right 2 pixels per frame."""
    clip = np.zeros((frames, size, size), dtype=np.uint8)
    for t in range(frames):
        clip[t, 9:15, start + 2 * t : start + 2 * t + 6] = 255
    return clip


def test_video_clips_from_frame_folders_gifs_mp4_and_shards(tmp_path):
    import imageio.v3 as iio
    from PIL import Image

    from latentbench.data.video_clips import VideoClipsDataModule

    root = tmp_path / "clips"
    for split, start in (("train", 0), ("val", 1), ("test", 2)):
        (root / split).mkdir(parents=True)
        folder = root / split / "folder_clip"
        folder.mkdir()
        for t, frame in enumerate(moving_square(6, start=start)):
            Image.fromarray(frame).save(folder / f"{t:03d}.png")
        (root / split / "folder_clip.txt").write_text("a square moving right\n")
        (root / split / "folder_clip.cls").write_text("1")
        iio.imwrite(root / split / "gif_clip.gif", moving_square(6, start=start), duration=100, loop=0)
        (root / split / "gif_clip.txt").write_text("a gif square")
    iio.imwrite(root / "train" / "video.mp4", np.repeat(moving_square(6)[..., None], 3, axis=-1), plugin="pyav", fps=5, codec="libx264")
    (root / "train" / "video.txt").write_text("an mp4 square")
    shard = root / "train" / "train-00000.tar"
    with tarfile.open(shard, "w") as tar:
        for name in ("video.mp4", "video.txt"):
            tar.add(root / "train" / name, arcname=f"000007.{name.split('.')[1]}")
    (root / "train" / "000007").mkdir()  # an empty folder is not a clip

    data = VideoClipsDataModule(root=str(root), num_frames=4, frame_stride=1, image_size=24, num_classes=2, batch_size=8)
    assert data.input_shape == (4, 1, 24, 24) and data.has_captions
    data.setup()
    train = data.splits["train"]
    assert train.captions == ["a square moving right", "a gif square", "an mp4 square", "an mp4 square"]
    assert train.labels.tolist() == [1, -1, -1, -1]
    assert next(iter(data.train_dataloader()))["image"].shape == (4, 4, 1, 24, 24)
    clips = train.images.float() / 255  # in the folder's order: frame folder, gif, the shard's mp4, the mp4 file
    expected = torch.from_numpy(moving_square(4)).float()[:, None] / 255
    torch.testing.assert_close(clips[0], expected, atol=0, rtol=0)  # PNG frames at their own size
    torch.testing.assert_close(clips[1], clips[0], atol=0.03, rtol=0)  # the GIF: the same frames, palette-rounded
    torch.testing.assert_close(clips[2], clips[0], atol=0.15, rtol=0)  # H.264 is lossy
    torch.testing.assert_close(clips[3], clips[2], atol=0, rtol=0)  # the shard's copy of the mp4
    halved = VideoClipsDataModule(root=str(root), num_frames=4, image_size=12, limit=1)
    halved.setup()
    assert halved.splits["val"].images.shape == (1, 4, 1, 12, 12)
    first = halved.splits["val"].images[0, 0, 0]  # the square of rows 9-14, columns 1-6, halved
    assert first[5, 1:3].tolist() == [255, 255] and int(first[:, 5:].max()) == 0 and int(first[:3].max()) == 0
    with pytest.raises(ConfigError, match=r"folder_clip: 6 frames give 3 at frame_stride 2; data\.num_frames is 4"):
        VideoClipsDataModule(root=str(root), num_frames=4, frame_stride=2, image_size=12).setup()
    with pytest.raises(ConfigError, match=r"^data\.root: .*nothing does not exist"):
        VideoClipsDataModule(root=str(tmp_path / "nothing"))
