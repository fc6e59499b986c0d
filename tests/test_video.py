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
    data = MovingDigitsDataModule(root=str(MNIST_ROOT))
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


# -- the video LDM ----------------------------------------------------------------------------------
TINY_UNET = {"_target_": "latentbench.models.video_ldm.build_video_unet", "block_out_channels": [16, 32], "norm_num_groups": 8}


def tiny_video_ldm(**kwargs):
    from latentbench.models.video_ldm import VideoLatentDiffusion

    return VideoLatentDiffusion(**{"input_shape": [4, 1, 8, 8], "unet": TINY_UNET, **kwargs})


@pytest.mark.slow  # 60+ s on 2 cores; the video U-Net's shapes and sampling stay in the trajectory test below
@pytest.mark.parametrize("conditioning", ["none", "class"])
def test_space_time_unet_shapes_and_a_few_training_steps_lower_the_loss(conditioning):
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(False)
    model = tiny_video_ldm(conditioning=conditioning, num_classes=10 if conditioning == "class" else None, ema_decay=None)
    clips = torch.zeros(4, 4, 1, 8, 8)
    for t in range(4):  # a bright bar moving right
        clips[:, t, :, 2:6, t : t + 2] = 1.0
    batch = {"image": clips, "label": torch.tensor([1, 2, 3, 4])}
    latents = model.to_latents(clips)
    assert model.latent_shape == (4, 1, 8, 8) and latents.shape == (4, 4, 1, 8, 8)
    condition = model.conditioner.from_batch(batch)
    assert model.unet(latents, torch.tensor([10, 20, 30, 40]), **condition).sample.shape == (4, 4, 1, 8, 8)
    optimizer = torch.optim.Adam(model.unet.parameters(), lr=2e-3)
    fixed = lambda: float(model.diffusion_loss(batch, torch.Generator().manual_seed(0)).detach())
    before = fixed()
    for _ in range(12):
        optimizer.zero_grad()
        model.diffusion_loss(batch).backward()
        optimizer.step()
    assert fixed() < 0.8 * before
    requests = [3, 7] if conditioning == "class" else None
    samples = model.sample(requests, per_condition=2, sampler="ddim", steps=3, guidance_scale=2.0)
    assert samples.shape == (4 if requests else 2, 4, 1, 8, 8) and 0 <= float(samples.min()) and float(samples.max()) <= 1


def test_the_class_token_also_enters_the_timestep_embedding_when_asked():
    from latentbench.models.video_ldm import build_video_unet

    def time_embeddings(unet, labels):
        seen = []
        hook = unet.unet.time_embedding.register_forward_hook(lambda module, args, out: seen.append(out))
        unet(torch.randn(2, 2, 4, 8, 8), torch.tensor([500, 500]), class_labels=labels)
        hook.remove()
        return seen[0]

    torch.manual_seed(0)
    small = dict(sample_size=8, in_channels=4, block_out_channels=[16, 32], condition_dim=24)
    both = build_video_unet(**small, num_class_embeds=11, class_in_time_embedding=True)
    assert both.unet.config.time_cond_proj_dim == 24
    emb = time_embeddings(both, torch.tensor([3, 7]))
    assert not torch.allclose(emb[0], emb[1])  # every ResNet block gets a class-dependent shift
    # the gradient of the loss reaches the class tokens through the timestep embedding too
    both.unet.time_embedding.cond_proj.weight.grad = None
    both(torch.randn(2, 2, 4, 8, 8), torch.tensor([10, 900]), class_labels=torch.tensor([3, 7])).sample.square().mean().backward()
    assert float(both.unet.time_embedding.cond_proj.weight.grad.abs().sum()) > 0
    # off (the default, as in checkpoints saved before the option): the class only enters the cross-attention
    token_only = build_video_unet(**small, num_class_embeds=11)
    assert token_only.unet.config.time_cond_proj_dim is None
    emb = time_embeddings(token_only, torch.tensor([3, 7]))
    torch.testing.assert_close(emb[0], emb[1])
    assert not any("cond_proj" in name for name in token_only.state_dict())
    # unconditional and text U-Nets have no class to add
    assert build_video_unet(**small, class_in_time_embedding=True).unet.config.time_cond_proj_dim is None
    assert build_video_unet(**small, cross_attention_dim=24, class_in_time_embedding=True).unet.config.time_cond_proj_dim is None


def test_joint_training_on_still_images_adds_a_loss_of_single_frames():
    model = tiny_video_ldm(still_images=3, conditioning="class", num_classes=10)
    batch = {"image": torch.rand(2, 4, 1, 8, 8), "label": torch.tensor([5, 6])}
    still = model.still_batch(batch)
    assert still["image"].shape == (3, 1, 1, 8, 8) and set(still["label"].tolist()) <= {5, 6}
    # each still is one of the batch's frames
    frames = batch["image"].reshape(8, 1, 8, 8)
    assert all(any(torch.equal(s[0], f) for f in frames) for s in still["image"])
    torch.manual_seed(1)
    joint = model.training_step(batch, 0)
    torch.manual_seed(1)
    clip_only = model.diffusion_loss(batch, drop_probability=0.1)
    assert float(joint.detach()) > float(clip_only.detach()) > 0  # the still loss is added
    with pytest.raises(ValueError, match=r"^input_shape: video latent diffusion needs clips \(T, C, H, W\), got \[1, 8, 8\]"):
        tiny_video_ldm(input_shape=[1, 8, 8])


@pytest.mark.parametrize(("video", "sampler"), [
    (False, "ddim"), (True, "ddim"), (False, "ddpm"), (False, "dpm"),
    # the space-time U-Net's other samplers: 50+ s each on 2 cores
    pytest.param(True, "ddpm", marks=pytest.mark.slow), pytest.param(True, "dpm", marks=pytest.mark.slow)])
def test_the_trajectory_has_one_frame_per_sampler_step_and_ends_at_the_sample(video, sampler):
    from latentbench.models.ldm import LatentDiffusion

    if video:
        model = tiny_video_ldm(conditioning="class", num_classes=10)
    else:
        model = LatentDiffusion(input_shape=[1, 8, 8], conditioning="class", num_classes=10,
                                unet={"_target_": "latentbench.models.ldm.build_unet", "block_out_channels": [16, 32]})
    images, trajectory = model.sample_trajectory([2, 5], steps=6, sampler=sampler, guidance_scale=2.0, seed=3)
    assert trajectory.shape == (6, *images.shape)
    assert torch.equal(images, model.sample([2, 5], steps=6, sampler=sampler, guidance_scale=2.0, seed=3))  # following costs nothing
    if sampler == "dpm":  # its last step returns its own x0 estimate: the same up to rounding
        torch.testing.assert_close(trajectory[-1], images, atol=1e-5, rtol=0)
    else:
        assert torch.equal(trajectory[-1], images)
    predictions = []
    latents = model.denoise([2, 5], 1, sampler, 6, 2.0, 3, on_step=predictions.append)
    assert len(predictions) == 6 and not torch.allclose(predictions[0], latents, atol=1e-2)  # the first prediction is not yet the sample


def test_trajectory_views_strip_and_video_shapes():
    from latentbench.callbacks import trajectory_views

    strip, video = trajectory_views(torch.rand(12, 2, 1, 8, 8), columns=5)
    assert strip.shape == (2 * 32 + 3, 5 * 32 + 6, 3) and video.shape == (12, 32 + 2, 2 * 32 + 3, 3)
    strip, video = trajectory_views(torch.rand(7, 3, 4, 1, 8, 8), columns=10)  # clips: the strip shows first frames
    assert strip.shape == (3 * 32 + 4, 7 * 32 + 8, 3) and video.shape == (7, 3 * 32 + 4, 4 * 32 + 5, 3)


# -- media and metrics ------------------------------------------------------------------------------
def test_written_videos_hold_the_frames(tmp_path):
    from latentbench.media import read_video, write_video

    frames = np.zeros((5, 16, 22, 3), dtype=np.uint8)
    for t in range(5):
        frames[t, 4:12, 3 * t : 3 * t + 6] = 255
    gif = read_video(write_video(tmp_path / "a.gif", frames, fps=5))
    assert gif.shape == (5, 16, 22, 3) and np.array_equal(gif, frames)
    mp4 = read_video(write_video(tmp_path / "b.mp4", frames[..., 0], fps=5))  # grey frames, sides made even
    assert mp4.shape == (5, 16, 22, 3) and np.abs(mp4.astype(int) - frames).mean() < 8


def test_temporal_distance_is_zero_for_real_vs_real_and_large_for_shuffled_or_frozen_frames():
    from latentbench.evaluation.temporal import frame_changes, temporal_distance

    generator = torch.Generator().manual_seed(0)
    clips = torch.zeros(200, 8, 1, 16, 16)
    starts, speeds = torch.randint(0, 6, (200,), generator=generator), torch.randint(1, 2, (200,), generator=generator)
    for n in range(200):
        for t in range(8):
            x = int(starts[n] + speeds[n] * t)
            clips[n, t, 0, 5:11, x : x + 4] = 1.0
    real_a, real_b = clips[:100], clips[100:]
    shuffled = real_b[:, torch.randperm(8, generator=generator)]
    frozen = real_b[:, :1].expand(-1, 8, -1, -1, -1)
    assert frame_changes(real_a).shape == (700,)
    same, jumbled, still = temporal_distance(real_a, real_b), temporal_distance(real_a, shuffled), temporal_distance(real_a, frozen)
    assert same < 0.002 and jumbled > 10 * max(same, 0.002) and still > 10 * max(same, 0.002), (same, jumbled, still)
    assert still == pytest.approx(float(frame_changes(real_a).mean()), rel=1e-6)  # frozen: every change is 0


def test_per_frame_fid_and_class_accuracy_of_clip_samples():
    """The FID callback measures clips frame by frame against the classifier of frames."""
    from latentbench.evaluation.fid import FID, DomainFeatures, FIDEvaluator
    from latentbench.models.classifier import ImageClassifier

    torch.manual_seed(0)
    classifier = ImageClassifier(input_shape=[1, 8, 8], num_classes=10, channels=[4, 8], feature_dim=8)
    evaluator = FIDEvaluator(DomainFeatures(classifier), "domain", image_shape=(1, 8, 8))
    callback = FID(evaluator, num_images=6, images="samples", sample_batch_size=4)
    real = torch.rand(6, 4, 1, 8, 8)
    predicted = DomainFeatures(classifier).predict(real.reshape(-1, 1, 8, 8)).reshape(6, 4)

    class PerfectSampler:  # returns the very clips the requests came from
        device = torch.device("cpu")

        def requests_from_batch(self, batch):
            return batch["label"].tolist()

        def sample_one_each(self, requests, count, seed_offset):
            return real[seed_offset : seed_offset + count]

    labels = predicted[:, 0]
    callback._start(PerfectSampler())
    callback._update(None, PerfectSampler(), None, {"image": real, "label": labels})
    results = {**callback._add_samples(PerfectSampler()), **evaluator.compute()}
    assert evaluator.num_real == evaluator.num_fake == 24  # 6 clips x 4 frames
    assert results["class_acc"] == pytest.approx(float((predicted == labels[:, None]).float().mean()))
    assert abs(results["fid_domain"]) < 1e-3


# -- end to end: first stage on frames -> video LDM -> latentbench sample ----------------------------
DIGITS = ["data=moving_digits", f"data.root={MNIST_ROOT}", "data.num_frames=4", "data.image_size=16", "data.digit_size=8",
          "data.num_train=16", "data.num_val=8", "data.num_test=8", "data.batch_size=8"]


@pytest.fixture(scope="module")
def video_run(tmp_path_factory) -> Path:
    """A tiny ae_kl (factor 2) trained on moving-digit frames, and a class-conditional video LDM on it (1 epoch)."""
    from hydra.core.global_hydra import GlobalHydra

    from latentbench.train import train
    from tests.conftest import FAST, make_cfg

    if not MNIST_ROOT.is_dir():
        pytest.skip("no MNIST")
    first_stage = tmp_path_factory.mktemp("frames_ae_kl")
    train(make_cfg([*FAST, *DIGITS, "data.frames_as_images=true", "model=ae_kl", "model.factor=2", "model.channels=[8,16]",
                    "model.layers_per_block=1", "model.norm_num_groups=4"], first_stage))
    GlobalHydra.instance().clear()
    run = tmp_path_factory.mktemp("video_ldm")
    metrics = train(make_cfg([*FAST, *DIGITS, "model=video_ldm", "model.conditioning=class", f"model.first_stage.checkpoint={first_stage}",
                              "model.unet.block_out_channels=[16,32]", "model.sampling.steps=3", "model.sampling.classes=[1,7]",
                              "model.latent_std_batches=1", "model.still_images=2", "callbacks.denoising_video.every_n_epochs=1",
                              "metrics.temporal.num_clips=4"], run))
    GlobalHydra.instance().clear()
    (run / "metrics_for_test.json").write_text(__import__("json").dumps(metrics))
    return run


@pytest.mark.slow  # with the video_run fixture: ~35 s together
def test_video_ldm_trains_on_moving_digits_and_logs_clips_videos_and_the_denoising(video_run):
    import json

    from PIL import Image

    from latentbench.media import read_video
    from latentbench.models.video_ldm import VideoLatentDiffusion

    metrics = json.loads((video_run / "metrics_for_test.json").read_text())
    assert np.isfinite(metrics["test/loss"]) and np.isfinite(metrics["test/first_stage/psnr"])
    assert metrics["test/sample_temporal_w1"] >= 0 and metrics["test/real_frame_change"] > 0
    model = VideoLatentDiffusion.load_from_checkpoint(metrics["checkpoint"], weights_only=True)
    assert model.latent_shape == (4, 4, 8, 8) and model.hparams.still_images == 2
    # the sample grid: one clip per row (classes 1 and 7), its 4 frames side by side, each 16 px shown at 32
    (grid,) = sorted((video_run / "images").glob("val_samples_*.png"))
    assert np.asarray(Image.open(grid)).shape == (2 * 32 + 3, 4 * 32 + 5, 3)
    (video,) = sorted((video_run / "videos").glob("val_samples_video_*.gif"))
    assert read_video(video).shape == (4, 2 * 32 + 3, 32 + 2, 3)  # one video frame per clip frame; a row per class
    (denoising,) = sorted((video_run / "videos").glob("val_denoising_video_*.gif"))
    from PIL import Image

    with Image.open(denoising) as gif:  # Pillow merges identical consecutive frames into one longer frame,
        shown = [(gif.seek(i), gif.info["duration"])[1] for i in range(gif.n_frames)]  # so count playing time
    assert 1 <= len(shown) <= 3 and sum(shown) == pytest.approx(3 * 1000 / 8, abs=len(shown) * 10)  # 3 sampler steps at 8 fps
    (strip,) = sorted((video_run / "images").glob("val_denoising_0*.png"))
    assert np.asarray(Image.open(strip)).shape == (2 * 32 + 3, 3 * 32 + 4, 3)  # 2 samples x 3 steps
    (reconstructions,) = sorted((video_run / "images").glob("val_reconstructions_*.png"))
    assert np.asarray(Image.open(reconstructions)).shape == (4 * 32 + 5, 4 * 32 + 5, 3)  # 2 clips, each with its reconstruction


@pytest.mark.slow  # with the video_run fixture: ~35 s together
def test_the_report_shows_the_clip_strips_and_plays_the_videos(video_run):
    from latentbench.report import data_uri, latest_images

    images = latest_images(video_run)
    assert images["val_samples"].suffix == ".png" and images["val_samples_video"].suffix == ".gif"
    assert images["val_denoising_video"].suffix == ".gif" and images["test_denoising"].suffix == ".png"
    assert data_uri(images["val_samples_video"]).startswith("data:image/gif;base64,R0lGOD")  # GIF89a: plays inline


@pytest.mark.slow  # with the video_run fixture: ~35 s together
def test_sample_command_writes_a_video_per_clip_and_the_denoising(video_run, tmp_path, capsys):
    import json

    from PIL import Image

    from latentbench.cli import main
    from latentbench.media import read_video

    out = tmp_path / "samples"
    code = main(["sample", f"checkpoint={video_run}", f"output={out}", "classes=[3,8]", "steps=4", "per_condition=2",
                 "trajectory=true", "fps=5"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "samples.json").read_text())
    assert [image["condition"] for image in record["images"]] == [3, 3, 8, 8]
    assert record["images"][0]["files"] == ["class3_00.gif", "class3_00.mp4"] and record["videos"] == ["grid.gif", "grid.mp4"]
    gif, mp4 = read_video(out / "class8_01.gif"), read_video(out / "class8_01.mp4")
    assert gif.shape == mp4.shape == (4, 16, 16, 3) and np.abs(gif.astype(int) - mp4).mean() < 10
    assert np.asarray(Image.open(out / "grid.png")).shape == (4 * 32 + 5, 4 * 32 + 5, 3)  # 4 clips as rows
    assert read_video(out / "grid.mp4").shape[0] == 4 and read_video(out / "denoising.gif").shape[0] == 4
    assert record["denoising"]["steps"] == 4
    # the last step of the trajectory is the sample: the strip's last column shows each clip's first frame
    strip = np.asarray(Image.open(out / "denoising.png"))
    first_frame = np.asarray(Image.fromarray(gif[0]).resize((32, 32), Image.NEAREST))
    shown = strip[3 * 33 + 1 : 3 * 33 + 33, 3 * 33 + 1 : 3 * 33 + 33]  # row 4 (class 8, second), column 4 (last step)
    assert np.array_equal(shown, first_frame)
    assert main(["sample", f"checkpoint={video_run}", f"output={out}", "video_formats=[avi]"]) == 2
    assert "video_formats: 'avi' is not allowed (allowed: gif, mp4)" in capsys.readouterr().err


def test_video_config_errors_are_one_line_before_training(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from latentbench.train import train
    from tests.conftest import FAST, make_cfg

    def error_of(*overrides: str) -> str:
        with pytest.raises(ConfigError) as caught:
            train(make_cfg([*FAST, *overrides], tmp_path))
        GlobalHydra.instance().clear()
        return str(caught.value)

    assert error_of("model=video_ldm").startswith("model.input_shape: video latent diffusion needs clips (T, C, H, W), got [1, 8, 8]")
    assert error_of("model=video_ldm", "data=moving_digits", "model.conditioning=class", "metrics.temporal.num_clips=1") == (
        "metrics.temporal.num_clips: expected an integer >= 2, got 1")
    assert error_of("model=ldm", "metrics.temporal.enabled=true").startswith(
        "metrics.temporal.enabled: measures sampled clips, but LatentDiffusion does not sample clips")
    assert error_of("data=moving_digits", "data.num_digits=3").startswith("data.num_digits: 1, 2 or a list of them")


@pytest.mark.slow  # W&B start-up: ~15 s
def test_an_image_ldm_logs_its_denoising_and_samples_to_wandb_as_videos(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from latentbench.media import read_video
    from latentbench.train import train
    from tests.conftest import FAST, make_cfg

    metrics = train(make_cfg([*FAST, "logger=wandb", "model=ldm", "model.unet.block_out_channels=[16,32]", "model.sampling.steps=3",
                              "model.conditioning=class", "model.sampling.classes=[1,2]", "data.limit=64", "data.batch_size=32",
                              "callbacks.denoising_video.every_n_epochs=1", "callbacks.denoising_video.num_samples=3"], tmp_path))
    GlobalHydra.instance().clear()
    media = next((tmp_path / "wandb").glob(f"offline-run-*-{metrics['wandb_run_id']}/files/media"))
    (video,) = media.glob("videos/val/denoising_video_*.gif")
    assert read_video(video).shape[0] == 3  # one frame per sampler step
    assert list(media.glob("images/val/denoising_*.png")) and list(media.glob("images/test/denoising_*.png"))
    assert (tmp_path / "videos").is_dir()  # the GIFs are kept beside the run too
