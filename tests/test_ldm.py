"""Latent diffusion: the first stage (ae_kl), the LDM on top of it, sampling and its errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from PIL import Image

from latentbench.errors import ConfigError
from latentbench.evaluation.fid import fid_callback
from latentbench.models.ae_kl import AutoencoderKL
from latentbench.models.ldm import LatentDiffusion
from latentbench.train import train
from tests.conftest import FAST, MNIST_ROOT, MNIST_SLICE, make_cfg, needs_mnist

TINY_AE = ["model.layers_per_block=1", "model.norm_num_groups=4"]
CHANNELS = {1: "[8]", 2: "[8,16]", 4: "[8,16,16]", 8: "[8,8,16,16]"}


def ae_kl_overrides(factor: int, *extra: str) -> list[str]:
    return ["model=ae_kl", f"model.factor={factor}", f"model.channels={CHANNELS[factor]}", *TINY_AE, *extra]


@pytest.mark.parametrize("factor", [1, 2, pytest.param(4, marks=pytest.mark.slow), 8])
def test_ae_kl_trains_and_round_trips_shapes(cfg_factory, factor):
    metrics = train(cfg_factory(*ae_kl_overrides(factor), "data.limit=64", "data.batch_size=32"))
    assert np.isfinite(metrics["test/recon_sse"]) and metrics["test/recon_sse"] > 0
    model = AutoencoderKL.load_from_checkpoint(metrics["checkpoint"], weights_only=True)
    x = torch.rand(3, 1, 8, 8)
    latents = model.encode_latents(x)
    assert latents.shape == (3, 4, 8 // factor, 8 // factor)
    assert model.decode_latents(latents).shape == x.shape


@pytest.mark.slow
def test_ae_kl_loss_falls(cfg_factory):
    cfg = cfg_factory(*ae_kl_overrides(2), "trainer.max_epochs=6", "data.limit=512", "model.optimizer.lr=0.003")
    metrics = train(cfg)
    first = AutoencoderKL(input_shape=[1, 8, 8], factor=2, channels=[8, 16], norm_num_groups=4)
    # an untrained model reconstructs at chance; training must take the error well below it
    from latentbench.data.digits import DigitsDataModule

    data = DigitsDataModule(limit=512)
    data.setup()
    images = data.splits["test"].images.float() / 16.0
    with torch.no_grad():
        untrained_sse = ((first(images) - images) ** 2).flatten(1).sum(1).mean().item()
    assert metrics["test/recon_sse"] < 0.5 * untrained_sse


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.factor=3"], "model.factor: must be one of 1, 2, 4, 8, got 3"),
        pytest.param(ae_kl_overrides(8, "data=mnist", f"data.root={MNIST_ROOT}", "data.pad_to=null"),
                     "model.factor: image size 28x28 is not divisible by factor 8 (allowed: a factor dividing both sides, or pad the images: data.pad_to=32)",
                     marks=needs_mnist),
        (["model=ae_kl", "model.factor=2"], "model.channels: factor 2 needs 2 levels"),
    ],
)
def test_ae_kl_config_errors(cfg_factory, overrides, message):
    if overrides[0] != "model=ae_kl":
        overrides = ["model=ae_kl", *overrides]
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(cfg_factory(*overrides))


# -- latent diffusion ----------------------------------------------------------------------------
TINY_LDM = ["model=ldm", "model.unet.block_out_channels=[16,32]", "model.sampling.steps=4", "model.sampling.per_condition=2",
            "data.limit=64", "data.batch_size=32", "model.latent_std_batches=2"]


@pytest.fixture(scope="module")
def first_stage_checkpoint(tmp_path_factory) -> str:
    """A tiny ae_kl (factor 2) trained for one epoch on digits: latents 4x4x4."""
    output = tmp_path_factory.mktemp("ae_kl")
    metrics = train(make_cfg([*FAST, *ae_kl_overrides(2), "data.limit=128", "data.batch_size=32"], output))
    GlobalHydra.instance().clear()
    return str(output)  # the run directory: stands for its best checkpoint


@pytest.mark.parametrize("conditioning", ["none", "class"])
def test_ldm_trains_on_first_stage_latents(cfg_factory, tmp_path, first_stage_checkpoint, conditioning):
    cfg = cfg_factory(*TINY_LDM, f"model.conditioning={conditioning}", f"model.first_stage.checkpoint={first_stage_checkpoint}")
    metrics = train(cfg)
    assert np.isfinite(metrics["test/loss"]) and np.isfinite(metrics["test/first_stage/psnr"])
    model = LatentDiffusion.load_from_checkpoint(metrics["checkpoint"], weights_only=True)
    assert model.latent_shape == (4, 4, 4)
    assert 0.0 < float(model.latent_std) != 1.0  # measured at fit start and saved
    samples = sorted((tmp_path / "images").glob("val_samples_*.png"))
    assert samples, "no sample grid was logged"
    rows = 10 if conditioning == "class" else 1
    height = np.asarray(Image.open(samples[0])).shape[0]
    assert height == rows * 32 + rows + 1  # 8x8 digits shown at 32 px, one row per class


def test_pixel_space_ldm_trains_on_mnist(cfg_factory):
    pytest.importorskip("latentbench.data.mnist")
    if not MNIST_ROOT.is_dir():
        pytest.skip("no MNIST")
    metrics = train(cfg_factory(*TINY_LDM, *MNIST_SLICE[:2], "data.limit=64", "data.val_size=32", "model.conditioning=class",
                                "model.unet.attention=[false,false]", "callbacks.sample_grid.every_n_epochs=0"))
    assert np.isfinite(metrics["test/loss"])
    model = LatentDiffusion.load_from_checkpoint(metrics["checkpoint"], weights_only=True)
    assert model.first_stage is None and model.latent_shape == (1, 28, 28)


def tiny_ldm(**kwargs) -> LatentDiffusion:
    arguments = dict(input_shape=[1, 8, 8], unet={"_target_": "latentbench.models.ldm.build_unet", "block_out_channels": [16, 32]})
    return LatentDiffusion(**{**arguments, **kwargs})


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_forward_noising_matches_closed_form(schedule):
    model = tiny_ldm(noise_scheduler={"_target_": "diffusers.DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": schedule})
    steps = 1000
    if schedule == "linear":  # Ho et al. 2020: beta_t linear from 1e-4 to 0.02
        alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, steps))
    else:  # Nichol & Dhariwal 2021: alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2), s = 0.008
        f = lambda t: np.cos((t / steps + 0.008) / 1.008 * np.pi / 2) ** 2
        betas = np.minimum(1 - f(np.arange(1, steps + 1)) / f(np.arange(steps)), 0.999)
        alpha_bar = np.cumprod(1.0 - betas)
    x0, eps = torch.randn(5, 1, 8, 8), torch.randn(5, 1, 8, 8)
    t = torch.tensor([0, 10, 250, 500, 999])
    noisy = model.noise_scheduler.add_noise(x0, eps, t)
    a = torch.tensor(alpha_bar[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, a.sqrt() * x0 + (1 - a).sqrt() * eps, rtol=1e-4, atol=1e-5)
    velocity = model.noise_scheduler.get_velocity(x0, eps, t)  # the v-prediction target
    torch.testing.assert_close(velocity, a.sqrt() * eps - (1 - a).sqrt() * x0, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_samplers_give_finite_images_of_the_right_shape(prediction_type):
    model = tiny_ldm(conditioning="class", num_classes=10, prediction_type=prediction_type)
    loss = model.diffusion_loss({"image": torch.rand(4, 1, 8, 8), "label": torch.arange(4)}, drop_probability=0.5)
    loss.backward()
    assert torch.isfinite(loss)
    for sampler, steps in (("ddim", 10), ("ddpm", 20), ("dpm", 10)):
        images = model.sample([3, 7], per_condition=2, sampler=sampler, steps=steps, guidance_scale=3.0)
        assert images.shape == (4, 1, 8, 8), sampler
        assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


def test_fixed_seed_sample_grid_is_identical_across_calls():
    model = tiny_ldm(conditioning="class", num_classes=10, sampling={"steps": 5, "per_condition": 2, "classes": [0, 5]})
    first, requests = model.sample_grid(sampler="ddpm")
    torch.manual_seed(999)  # the global RNG must not matter
    second, _ = model.sample_grid(sampler="ddpm")
    assert requests == [0, 5] and first.shape == (4, 1, 8, 8)
    assert torch.equal(first, second)
    other_seed, _ = model.sample_grid(sampler="ddpm", seed=1)
    assert not torch.equal(first, other_seed)
    # image i's starting noise depends on seed + i only: a 1-image call reproduces the first image
    alone = model.sample([0], per_condition=1, sampler="ddim", steps=5, guidance_scale=3.0)
    in_pair = model.sample([0, 5], per_condition=1, sampler="ddim", steps=5, guidance_scale=3.0)[0]
    torch.testing.assert_close(alone[0], in_pair, atol=1e-4, rtol=0)  # batch size only changes float rounding


def test_guidance_changes_class_samples():
    model = tiny_ldm(conditioning="class", num_classes=10)
    plain = model.sample([1, 2], steps=5, guidance_scale=1.0)
    guided = model.sample([1, 2], steps=5, guidance_scale=5.0)
    assert not torch.equal(plain, guided)


def test_ldm_config_errors(cfg_factory, tmp_path, first_stage_checkpoint):
    def error_of(*overrides: str) -> str:
        with pytest.raises(ConfigError) as caught:
            train(cfg_factory(*TINY_LDM, *overrides))
        message = str(caught.value)
        assert "\n" not in message
        return message

    assert error_of("model.conditioning=text").startswith("model.conditioning: 'text' needs image-text data with captions")
    fits = f"model.first_stage.checkpoint={first_stage_checkpoint}"
    assert error_of(fits, "model.unet.block_out_channels=[8,8,8,8]", "model.unet.attention=[false,false,false,false]").startswith(
        "model.unet.block_out_channels: the latents of first_stage.checkpoint")
    assert "are 4x4x4; a U-Net with 4 levels needs square sides divisible by 8" in error_of(
        fits, "model.unet.block_out_channels=[8,8,8,8]", "model.unet.attention=[false,false,false,false]")
    assert error_of("model.first_stage.checkpoint=/nonexistent/a.ckpt") == "model.first_stage.checkpoint: checkpoint /nonexistent/a.ckpt does not exist"
    good = Path(first_stage_checkpoint) / "checkpoints" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "is not a readable checkpoint" in error_of(f"model.first_stage.checkpoint={truncated}")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "latentbench_model_class": "latentbench.models.ae.AutoEncoder"}, foreign)
    assert error_of(f"model.first_stage.checkpoint={foreign}").endswith(
        "holds a latentbench.models.ae.AutoEncoder checkpoint, expected latentbench.models.ae_kl.AutoencoderKL")
    if MNIST_ROOT.is_dir():
        assert "was trained on images of shape [1, 8, 8], but the data gives [1, 28, 28]" in error_of(fits, *MNIST_SLICE[:2])


def test_unknown_option_keys_are_refused(cfg_factory):
    with pytest.raises(ConfigError, match=r"^model\.sampling\.stpes: unknown key \(allowed: sampler, steps"):
        train(cfg_factory(*TINY_LDM, "+model.sampling.stpes=3"))


def test_class_conditioning_needs_classes():
    with pytest.raises(ValueError, match=r"conditioning: 'class' needs labelled data with classes, but this data module has num_classes=None"):
        tiny_ldm(conditioning="class", num_classes=None)


@pytest.mark.slow
def test_class_conditional_mnist_samples_are_recognised(tmp_path):
    """Real learning: class-conditional latent diffusion on MNIST; a classifier trained on real
    MNIST recognises the requested class in the samples far above chance (10%)."""
    if not MNIST_ROOT.is_dir():
        pytest.skip("no MNIST")
    from sklearn.linear_model import LogisticRegression

    from latentbench.data.mnist import MNISTDataModule

    data = [*MNIST_SLICE[:2], "data.limit=12000", "data.val_size=1000", "data.batch_size=64"]
    first_stage = train(make_cfg([*FAST, "model=ae_kl", "model.factor=2", "model.channels=[32,64]", "model.latent_channels=4", *data],
                                 tmp_path / "ae_kl"))
    GlobalHydra.instance().clear()
    assert first_stage["test/psnr"] > 18
    ldm_cfg = make_cfg([*FAST, "model=ldm", "model.conditioning=class", f"model.first_stage.checkpoint={tmp_path / 'ae_kl'}",
                        "trainer.max_epochs=8", "model.optimizer.lr=0.001", "model.ema_decay=0.995", "callbacks.sample_grid.every_n_epochs=0", *data],
                       tmp_path / "ldm")
    metrics = train(ldm_cfg)
    GlobalHydra.instance().clear()
    model = LatentDiffusion.load_from_checkpoint(metrics["checkpoint"], weights_only=True).eval()
    classes = list(range(10))
    samples = model.sample(classes, per_condition=20, sampler="ddim", steps=50, guidance_scale=3.0, seed=0)

    reference = MNISTDataModule(root=str(MNIST_ROOT), limit=20000, val_size=1000)
    reference.setup()
    split = reference.splits["train"]
    classifier = LogisticRegression(max_iter=300).fit((split.images.float() / split.pixel_scale).flatten(1).numpy(), split.labels.numpy())
    predicted = classifier.predict(samples.flatten(1).numpy())
    requested = np.repeat(classes, 20)
    accuracy = float((predicted == requested).mean())
    print(f"conditional accuracy {accuracy:.3f} after {metrics['global_step']} steps, test/loss {metrics['test/loss']:.4f}")
    assert accuracy > 0.6


@pytest.fixture(scope="module")
def class_ldm_run(tmp_path_factory, first_stage_checkpoint) -> Path:
    """A tiny class-conditional LDM on the tiny ae_kl, trained for one epoch on digits."""
    output = tmp_path_factory.mktemp("ldm_class")
    train(make_cfg([*FAST, *TINY_LDM, "model.conditioning=class", f"model.first_stage.checkpoint={first_stage_checkpoint}",
                    "callbacks.sample_grid.every_n_epochs=0"], output))
    GlobalHydra.instance().clear()
    return output


def test_sample_command_writes_grid_and_images(class_ldm_run, tmp_path, capsys):
    from latentbench.cli import main

    out = tmp_path / "samples"
    code = main(["sample", f"checkpoint={class_ldm_run}", f"output={out}", "classes=[3,5,7]", "sampler=ddim", "steps=5",
                 "per_condition=2", "seed=4"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "samples.json").read_text())
    assert record["requests"] == [3, 5, 7] and len(record["images"]) == 6
    assert [image["condition"] for image in record["images"]] == [3, 3, 5, 5, 7, 7]
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[:2] == (3 * 32 + 4, 2 * 32 + 3)  # 3 rows x 2 columns of 8x8 digits shown at 32 px
    first = np.asarray(Image.open(out / record["images"][0]["file"]))
    assert first.shape == (8, 8)
    # the same command gives the same pixels; without output= the samples go into the run's folder
    assert main(["sample", f"checkpoint={class_ldm_run}", "classes=[3,5,7]", "sampler=ddim", "steps=5", "per_condition=2", "seed=4"]) == 0
    (again,) = Path(class_ldm_run).glob("samples/*/grid.png")
    assert np.array_equal(grid, np.asarray(Image.open(again)))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["output=/tmp/x"], "checkpoint: missing required value"),
        (["checkpoint=/nonexistent.ckpt", "output=/tmp/x"], "checkpoint: checkpoint /nonexistent.ckpt does not exist"),
        (["RUN", "output=/tmp/x", "prompts=[a red circle]"], "prompts: this model is class-conditional; give classes=[...] instead"),
        (["RUN", "output=/tmp/x", "classes=[12]"], "classes: 12 is not a class id (allowed: 0..9)"),
        (["RUN", "output=/tmp/x", "sampler=euler"], "sampler: 'euler' is not a sampler (allowed: ddpm, ddim, dpm)"),
        (["RUN", "output=/tmp/x", "colour=red"], "sample: unknown argument 'colour'"),
        (["RUN", "output=/tmp/x", "step=3"], "sample: unknown argument 'step' (did you mean steps?)"),
    ],
)
def test_sample_command_errors(class_ldm_run, capsys, arguments, message):
    from latentbench.cli import main

    arguments = [f"checkpoint={class_ldm_run}" if a == "RUN" else a for a in arguments]
    assert main(["sample", *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}"), err


# a tiny random open_clip CLIP: its frozen text tower gives per-token states (B, 16, 32)
TINY_CLIP = "{embed_dim:16,vision_cfg:{image_size:16,layers:1,width:32,head_width:16,patch_size:8},text_cfg:{context_length:16,width:32,heads:2,layers:1}}"
SHAPES = ["data=shapes", "data.image_size=16", "data.num_train=64", "data.num_val=32", "data.num_test=32", "data.batch_size=32"]


def test_text_conditioned_ldm_trains_on_shapes(cfg_factory, tmp_path, tmp_path_factory):
    clip_run = tmp_path_factory.mktemp("clip")
    clip_cfg = [f"model.model_cfg={TINY_CLIP}", "trainer.max_steps=2"]
    # no embedding plot: its kNN calls model.encode(images), which CLIPModel does not take
    train(make_cfg([*FAST, "model=clip", *SHAPES, *clip_cfg, "~callbacks.embedding_plot"], clip_run))
    GlobalHydra.instance().clear()
    cfg = cfg_factory(*TINY_LDM, *SHAPES, "model.conditioning=text", f"model.text_encoder.checkpoint={clip_run}")
    metrics = train(cfg)
    assert np.isfinite(metrics["test/loss"])
    model = LatentDiffusion.load_from_checkpoint(metrics["checkpoint"], weights_only=True)
    from latentbench.models.clip_inference import load_clip

    clip, tokenizer = load_clip(checkpoint=model.hparams.text_encoder["checkpoint"])
    captions = ["a large red circle on a blue background, top left", ""]
    states = model.conditioner.encode(captions, torch.device("cpu"))
    assert states.shape == (2, 16, 32) and not torch.allclose(states[0], states[1])
    # the frozen tower is the CLIP run's: its final hidden state at the EOT token, projected, is CLIP's text embedding
    eot = tokenizer(captions).argmax(dim=-1)
    projected = states[torch.arange(2), eot] @ clip.text_projection
    torch.testing.assert_close(projected, clip.encode_text(tokenizer(captions)), rtol=1e-4, atol=1e-5)
    prompts = model.hparams.sampling["prompts"]  # fixed from the validation captions at fit start
    assert len(prompts) == 4 and all(" on a " in p for p in prompts)
    images = model.sample(prompts[:2], per_condition=2, sampler="ddim", steps=5, guidance_scale=3.0)
    assert images.shape == (4, 3, 16, 16) and torch.isfinite(images).all()
    grid = np.asarray(Image.open(sorted((tmp_path / "images").glob("val_samples_*.png"))[0]))
    assert grid.shape[0] == 4 * 32 + 5  # one row per prompt
    # compiled: the caption dropout (Python's random) and the tokenizer stay eager, the rest is traced
    GlobalHydra.instance().clear()
    compiled = train(make_cfg([*FAST, *TINY_LDM, *SHAPES, "model.conditioning=text", f"model.text_encoder.checkpoint={clip_run}",
                               "compile.enabled=true", "compile.backend=eager"], tmp_path_factory.mktemp("compiled")))
    assert np.isfinite(compiled["test/loss"]) and compiled["global_step"] == 2


def test_text_encoder_checkpoint_of_the_wrong_kind(cfg_factory, first_stage_checkpoint):
    with pytest.raises(ConfigError, match=r"^model\.text_encoder\.checkpoint: .* holds a latentbench\.models\.ae_kl\.AutoencoderKL checkpoint, expected latentbench\.models\.clip\.CLIPModel"):
        train(cfg_factory(*TINY_LDM, *SHAPES, "model.conditioning=text", f"model.text_encoder.checkpoint={first_stage_checkpoint}"))


def test_sample_class_accuracy_is_the_fid_classifiers_agreement_with_the_requested_classes(cfg_factory, tmp_path_factory, monkeypatch):
    classifier_run = tmp_path_factory.mktemp("classifier")
    clf = train(make_cfg([*FAST, "model=classifier", "model.channels=[8,16]", "model.feature_dim=16", "data.limit=1024", "trainer.max_epochs=4", "model.optimizer.lr=0.01"], classifier_run))
    GlobalHydra.instance().clear()
    cfg = cfg_factory(*TINY_LDM, "model.conditioning=class", "model.sampling.steps=2", "metrics.fid.enabled=true",
                      f"metrics.fid.checkpoint='{clf['checkpoint']}'", "metrics.fid.num_images=40", "metrics.fid.sample_batch_size=16")
    metrics = train(cfg)
    assert 0 <= metrics["test/sample_class_acc"] <= 1 and metrics["test/sample_fid_domain"] > 0
    assert "test/fid_domain" not in metrics  # images=auto: a model that samples is measured on its samples
    model = LatentDiffusion.load_from_checkpoint(metrics["checkpoint"], weights_only=True).eval()
    callback = fid_callback(enabled=True, checkpoint=clf["checkpoint"], num_images=40, sample_batch_size=16)
    callback.setup(None, model, "test")
    data = instantiate(cfg.data)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    real, labels = batch["image"][:40], batch["label"][:40]
    callback._start(model)
    callback._update(None, model, None, {"image": real, "label": labels})
    # a "perfect" sampler returns the very images the requested classes came from
    monkeypatch.setattr(model, "sample_one_each", lambda requests, count, seed_offset: real[seed_offset:][:count])
    results = {**callback._add_samples(model), **callback.evaluator.compute()}
    classifier = callback.evaluator.extractor
    assert results["class_acc"] == pytest.approx(float((classifier.predict(real) == labels).float().mean()))
    assert results["class_acc"] > 0.3, (clf, results)  # the tiny classifier is far above chance (10 %) on real digits
    assert abs(results["fid_domain"]) < 1e-3


def test_fid_without_classifier_checkpoint_is_one_line(cfg_factory):
    with pytest.raises(ConfigError, match=r"^metrics\.fid\.checkpoint: required when features=domain"):
        train(cfg_factory(*TINY_LDM, "metrics.fid.enabled=true"))


@pytest.mark.parametrize("override, key, moved_to", [("+model.fid.enabled=true", "model.fid", "metrics.fid"),
                                                     ("+model.sampling.every_n_epochs=2", "model.sampling.every_n_epochs", "callbacks.sample_grid.every_n_epochs")])
def test_keys_that_moved_out_of_the_model_are_named_with_their_new_place(cfg_factory, override, key, moved_to):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: moved to {re.escape(moved_to)}"):
        train(cfg_factory(*TINY_LDM, override))


def test_sample_command_logs_to_the_runs_wandb(cfg_factory, tmp_path):
    from latentbench.cli import main

    metrics = train(cfg_factory(*TINY_LDM, "logger=wandb", "callbacks.sample_grid.every_n_epochs=0", "model.ema_decay=null"))
    out = tmp_path / "samples"
    assert main(["sample", f"checkpoint={tmp_path}", f"output={out}", "steps=3", "per_condition=3"]) == 0
    record = json.loads((out / "samples.json").read_text())
    assert record["wandb_run_id"] == metrics["wandb_run_id"]
    assert [image["file"] for image in record["images"]] == ["sample_000.png", "sample_001.png", "sample_002.png"]
    logged = list((tmp_path / "wandb").glob(f"offline-run-*-{metrics['wandb_run_id']}/files/media/images/samples/grid_*.png"))
    assert logged, "the grid did not reach the training run's W&B files"


def test_ema_warms_up_then_decays_at_the_configured_rate():
    from torch.optim.swa_utils import AveragedModel

    from latentbench.models.ldm import ema_with_warmup

    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = AveragedModel(net, multi_avg_fn=ema_with_warmup(0.999), use_buffers=True)
    ema.update_parameters(net)  # the first update copies: 0
    net.weight.data.fill_(1.0)
    ema.update_parameters(net)  # n = 1: decay (1 + 1) / (10 + 1)
    assert float(ema.module.weight) == pytest.approx(1 - 2 / 11)
    for _ in range(600):
        ema.update_parameters(net)
    assert float(ema.module.weight) > 0.999  # with a constant 0.999 it would be 1 - 0.999 ** 600 = 0.45
    net.weight.data.fill_(2.0)
    for _ in range(10_000):
        ema.update_parameters(net)
    before = float(ema.module.weight)
    ema.update_parameters(net)
    assert float(ema.module.weight) == pytest.approx(before + (1 - 0.999) * (2.0 - before))  # warm-up over: decay 0.999


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm"])
def test_samplers_never_clip_the_unit_std_latents(sampler):
    """diffusers clips predicted samples to [-1, 1] by default, which broke every MNIST sample: a
    third of unit-std latent values lie outside that range."""
    from diffusers import DDPMScheduler

    from latentbench.models.ldm import make_sampler

    config = DDPMScheduler(num_train_timesteps=50, clip_sample=True).config
    scheduler = make_sampler(sampler, config)
    scheduler.set_timesteps(5)
    latents = torch.full((1, 1, 2, 2), 3.0)
    t = scheduler.timesteps[-1]  # the last step: the prediction of the clean sample is the result
    out = scheduler.step(torch.zeros_like(latents), t, latents, generator=torch.Generator().manual_seed(0)).prev_sample
    assert float(out.max()) > 1.5  # 3.0 minus a little noise; clipped it would be at most 1
