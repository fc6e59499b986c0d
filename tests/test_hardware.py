"""Hardware strategies on CPU: 2-process DDP equals 1 process, precisions run, compile is exact."""

from __future__ import annotations

import json

import pytest
import torch

from latentbench.train import train
from tests.conftest import MNIST_ROOT, needs_mnist, run_cli

# 512 train / 256 val / 512 test MNIST images; global batch 64 in both runs.
SLICE = ["data=mnist", f"data.root={MNIST_ROOT}", "data.limit=512", "data.val_size=256", "callbacks=none",
         "deterministic=true", "logger=none"]
DDP_KEYS = ("test/recon_sse", "test/mse", "test/psnr", "test/ssim")


def ddp_metrics(tmp_path, *overrides: str) -> dict:
    result = run_cli("train", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *SLICE, *overrides,
                     f"hydra.run.dir={tmp_path / 'ddp'}", fresh=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / "ddp" / "metrics.json").read_text())


@pytest.mark.slow  # 60 s; the DDP path stays in the default run through the autoencoder test below
@needs_mnist
def test_ddp_two_processes_match_one_process_for_pca(cfg_factory, tmp_path):
    single = train(cfg_factory(*SLICE, "model=pca", "data.batch_size=64"))
    double = ddp_metrics(tmp_path, "model=pca", "data.batch_size=32")
    for key in DDP_KEYS:
        assert double[key] == pytest.approx(single[key], rel=1e-5), key


@needs_mnist
def test_ddp_two_processes_match_one_process_for_ae(cfg_factory, tmp_path):
    # Rank r takes every other index of the same permutation, so the two ranks' batches of 32 form
    # exactly the single run's batch of 64 and the averaged gradients agree up to float rounding.
    steps = ["model=ae", "trainer.max_epochs=2"]
    single = train(cfg_factory(*SLICE, *steps, "data.batch_size=64"))
    double = ddp_metrics(tmp_path, *steps, "data.batch_size=32")
    assert double["global_step"] == single["global_step"] == 16
    for key in DDP_KEYS:
        assert double[key] == pytest.approx(single[key], rel=1e-3, abs=5e-4), key


@pytest.mark.parametrize("precision", ["'32'", "bf16-mixed", "bf16-true"])
def test_precisions_that_cpu_supports_run(cfg_factory, precision):
    metrics = train(cfg_factory(f"precision={precision}", "model=ae_conv", "trainer.fast_dev_run=true"))
    assert torch.isfinite(torch.tensor(metrics["test/mse"]))


def test_fp16_on_cpu_is_a_clear_error(capsys, tmp_path):
    from latentbench.cli import main

    code = main(["train", "precision=16-mixed", "trainer=cpu", "logger=none", f"hydra.run.dir={tmp_path}"])
    assert code == 2
    assert "error: trainer.precision: '16-mixed' needs a CUDA GPU" in capsys.readouterr().err


def test_compiled_model_matches_eager():
    from latentbench.models.ae_conv import ConvAutoEncoder

    torch.manual_seed(0)
    model = ConvAutoEncoder((1, 28, 28), channels=[8, 16], latent_dim=8).eval()
    x = torch.rand(4, 1, 28, 28)
    compiled = torch.compile(model)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


def test_compile_and_channels_last_train(cfg_factory):
    metrics = train(cfg_factory("model=ae_conv", "compile.enabled=true", "compile.backend=aot_eager",
                                "channels_last=true", "matmul_precision=high", "trainer.fast_dev_run=true"))
    assert torch.isfinite(torch.tensor(metrics["test/recon_sse"]))


def test_on_device_data_serves_batches_from_held_tensors(cfg_factory):
    from latentbench.data.digits import DigitsDataModule

    datamodule = DigitsDataModule(on_device=True, batch_size=16)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (16, 1, 8, 8)
    metrics = train(cfg_factory("data.on_device=true", "trainer.fast_dev_run=true"))
    assert torch.isfinite(torch.tensor(metrics["test/mse"]))
    with pytest.raises(ValueError, match="on_device: true needs num_workers: 0"):
        DigitsDataModule(on_device=True, num_workers=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_compile_on_device(cfg_factory):
    metrics = train(cfg_factory("trainer=gpu", "precision=bf16-mixed", "compile.enabled=true", "data.on_device=true",
                                "model=ae_conv", "trainer.max_epochs=1"))
    assert torch.isfinite(torch.tensor(metrics["test/mse"]))


@pytest.mark.parametrize("loss", ["bce", "mse", "l1"])
def test_reconstruction_loss_runs_in_float32_with_autocast_off(loss, monkeypatch):
    """bf16-mixed with the Hinton AE's bce: CUDA autocast refuses binary_cross_entropy on probabilities
    (seen on an H200), so the loss runs with autocast off, on float32 inputs, and equals the fp32 loss."""
    from latentbench.models.blocks import reconstruction_loss

    generator = torch.Generator().manual_seed(0)
    reconstruction, target = torch.rand(8, 784, generator=generator), torch.rand(8, 784, generator=generator)
    expected = reconstruction_loss(loss, reconstruction, target)
    calls = []
    for name in ("binary_cross_entropy", "mse_loss", "l1_loss"):
        def recording(x, *args, _original=getattr(torch.nn.functional, name), **kwargs):
            calls.append((torch.is_autocast_enabled("cpu"), x.dtype))
            return _original(x, *args, **kwargs)
        monkeypatch.setattr(torch.nn.functional, name, recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = reconstruction_loss(loss, reconstruction.bfloat16(), target)
    assert calls == [(False, torch.float32)]
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected.item(), rel=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_per_step_host_work_does_not_wait_for_the_gpu():
    """Batch indices, tokens and the non-finite-loss record reach the GPU without a stream sync
    (a sync every step takes away the CPU/GPU overlap: the harness's extra time per LDM step on an H200)."""
    from latentbench.callbacks import StopOnNonFiniteLoss
    from latentbench.data.base import TensorSplit
    from latentbench.devices import to_device_without_sync

    split = TensorSplit(torch.randint(0, 255, (64, 1, 8, 8), dtype=torch.uint8, device="cuda"),
                        torch.arange(64, device="cuda"), 255.0, flatten=False)
    guard = StopOnNonFiniteLoss()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        copied = to_device_without_sync(torch.arange(5), "cuda")
        batch = split[[3, 1, 4, 1, 5]]
        guard._record(batch["image"].mean(), step=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert copied.tolist() == [0, 1, 2, 3, 4]
    assert batch["label"].tolist() == [3, 1, 4, 1, 5]
    guard.check()  # finite: no error


def test_to_device_without_sync_on_the_cpu_is_a_plain_copy():
    from latentbench.devices import to_device_without_sync

    values = torch.arange(6).reshape(2, 3)
    moved = to_device_without_sync(values, "cpu")
    assert moved.device.type == "cpu" and torch.equal(moved, values)


def test_model_ldm_picks_precision_auto_which_a_user_choice_overrides(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from latentbench.train import resolve_precision
    from tests.conftest import make_cfg

    try:
        assert make_cfg(["model=ldm"], tmp_path).trainer.precision == "auto"
        assert make_cfg(["model=ldm", "precision='32'"], tmp_path).trainer.precision == "32-true"
        assert make_cfg(["model=ae"], tmp_path).trainer.precision == "32-true"
        cfg = make_cfg(["model=ldm", "trainer=cpu"], tmp_path)
    finally:
        GlobalHydra.instance().clear()
    resolve_precision(cfg)
    assert cfg.trainer.precision == "32-true"  # bf16-mixed only on a CUDA GPU with bf16


def test_channels_last_auto_is_for_conv_models_on_cuda_in_half_precision():
    from latentbench.callbacks import ChannelsLast, channels_last_pays

    conv, dense = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), torch.nn.Sequential(torch.nn.Linear(3, 8))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert channels_last_pays(cuda, "bf16-mixed", conv) and channels_last_pays(cuda, "16-mixed", conv)
    assert not channels_last_pays(cuda, "32-true", conv)
    assert not channels_last_pays(cuda, "bf16-mixed", dense)
    assert not channels_last_pays(cpu, "bf16-mixed", conv)
    with pytest.raises(ValueError, match="enabled: expected true, false or 'auto', got 'yes'"):
        ChannelsLast("yes")


def test_adam_runs_fused_on_the_cpu_and_cuda_unless_its_config_says_so(monkeypatch):
    from latentbench.models import base

    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3, 2))]
    adam = {"_target_": "torch.optim.Adam", "lr": 1e-3}
    assert base.optimizer_and_scheduler(adam, None, params).defaults["fused"] is True
    adamw = base.optimizer_and_scheduler({**adam, "_target_": "torch.optim.AdamW"}, None, [{"params": params}])
    assert adamw.defaults["fused"] is True
    for chosen in ({"fused": False}, {"foreach": True}, {"differentiable": True}):
        assert not base.optimizer_and_scheduler({**adam, **chosen}, None, params).defaults["fused"], chosen
    assert not base.optimizer_and_scheduler({"_target_": "torch.optim.SGD", "lr": 0.1}, None, params).defaults.get("fused")
    on_meta = [torch.nn.Parameter(torch.zeros(2, device="meta"))]
    assert not base.fusable(on_meta) and not base.fusable([]) and base.fusable(params)
    # a fused update is the same update: one step each from the same state
    grads = [torch.randn_like(p) for p in params]
    updated = []
    for fused in (True, False):
        copies = [torch.nn.Parameter(p.detach().clone() + 1) for p in params]
        for copy, grad in zip(copies, grads):
            copy.grad = grad.clone()
        optimizer = base.optimizer_and_scheduler({**adam, "fused": fused}, None, copies)
        optimizer.step()
        updated.append([c.detach() for c in copies])
    for a, b in zip(*updated):
        torch.testing.assert_close(a, b)


def test_bf16_on_a_cpu_that_emulates_it_is_warned_of_in_one_line(tmp_path, monkeypatch, caplog):
    """On an AVX2-only CPU bf16 autocast runs matrix products ~50x slower than float32: say so before training."""
    from hydra.core.global_hydra import GlobalHydra

    import latentbench.train as train_module
    from tests.conftest import make_cfg

    try:
        bf16 = make_cfg(["trainer=cpu", "precision=bf16-mixed"], tmp_path)
        fp32 = make_cfg(["trainer=cpu"], tmp_path)
    finally:
        GlobalHydra.instance().clear()
    for native, cfg, warned in ((False, bf16, True), (True, bf16, False), (False, fp32, False)):
        monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda native=native: native)
        caplog.clear()
        train_module.warn_of_emulated_bf16(cfg)
        lines = [r.getMessage() for r in caplog.records if "bfloat16" in r.getMessage()]
        assert lines == (["precision=bf16-mixed: this CPU has no native bfloat16 (AVX512-BF16/AMX), so its matrix products "
                          "are emulated, ~50x slower than precision=32-true (or precision=auto)"] if warned else [])


def test_a_one_process_run_asks_cuda_availability_without_nvml_while_it_trains(cfg_factory, monkeypatch):
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 at import; Adam asks torch.cuda.is_available() every
    step, which then loads NVML each time. Inside a one-process fit the variable is unset, after it restored."""
    import os

    import pytorch_lightning as pl

    from latentbench.devices import NVML_CUDA_CHECK

    seen = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(os.environ.get(NVML_CUDA_CHECK))

    monkeypatch.setenv(NVML_CUDA_CHECK, "1")
    from latentbench.train import build_run

    built = build_run(cfg_factory("model=ae", "trainer=cpu", "logger=none", "trainer.max_steps=2", "fused_steps=1", "callbacks=none",
                                  "+callbacks.cuda_checks._target_=latentbench.callbacks.CudaChecksFromTheRuntime"))
    built["trainer"].callbacks.append(Record())
    built["trainer"].fit(built["model"], datamodule=built["datamodule"])
    assert seen == [None, None]
    assert os.environ[NVML_CUDA_CHECK] == "1"
