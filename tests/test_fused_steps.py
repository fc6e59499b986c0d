"""fused_steps=K: K optimizer steps per Lightning step, counted, logged, scheduled and resumed as real steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from latentbench.data.base import ResumableBatchSampler
from latentbench.errors import ConfigError
from latentbench.run_dir import RunDir
from latentbench.train import build_run
from tests.conftest import make_cfg, run_cli

# Digits AE, 2 epochs of 21 batches (21 is not a multiple of 4: each epoch ends on a short group)
RUN = ["model=ae", "trainer=cpu", "trainer.max_epochs=2", "deterministic=true", "logger=none", "trainer.log_every_n_steps=3",
       "callbacks.embedding_plot.methods=[pca]"]
COMPARED = ("test/recon_sse", "test/mse", "best_val/loss", "global_step", "epochs")
SCHEDULERS = {
    "step": "model.scheduler={_target_: torch.optim.lr_scheduler.StepLR, step_size: 7, gamma: 0.5, interval: step}",
    "epoch": "model.scheduler={_target_: torch.optim.lr_scheduler.StepLR, step_size: 1, gamma: 0.1}",
}


def trained(run_dir, *extra: str) -> RunDir:
    result = run_cli("train", *RUN, *extra, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return RunDir(run_dir)


def train_loss_rows(run: RunDir) -> list[tuple[int, str]]:
    header, *rows = run.history_file.read_text().splitlines()
    names = header.split(",")
    step, loss = names.index("step"), names.index("train/loss")
    return [(int(row.split(",")[step]), row.split(",")[loss]) for row in rows if row.split(",")[loss]]


class SingleStepRuns(dict):
    """The reference runs without fused steps, one per scheduler, trained when first asked for."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, scheduler: str) -> RunDir:
        self[scheduler] = trained(self.root / scheduler, SCHEDULERS[scheduler], "fused_steps=1")
        return self[scheduler]


@pytest.fixture(scope="module")
def single_steps(tmp_path_factory):
    return SingleStepRuns(tmp_path_factory.mktemp("single"))


@pytest.mark.parametrize("scheduler", ["step", pytest.param("epoch", marks=pytest.mark.slow)])
def test_fused_steps_train_log_and_schedule_exactly_as_single_steps(single_steps, tmp_path, scheduler):
    fused = trained(tmp_path / "run", SCHEDULERS[scheduler], "fused_steps=4")
    single = single_steps[scheduler]
    assert {k: fused.metrics()[k] for k in COMPARED} == {k: single.metrics()[k] for k in COMPARED}
    assert fused.metrics()["global_step"] == 42
    # the same values at the same (real) steps: every 3rd step, though a fused group is 4 steps
    rows = train_loss_rows(fused)
    assert rows == train_loss_rows(single)
    assert [step for step, _ in rows][:4] == [3, 6, 9, 12]


def test_a_fused_run_killed_between_saves_resumes_exactly(single_steps, tmp_path):
    run_dir = tmp_path / "run"
    killed = run_cli("train", *RUN, SCHEDULERS["step"], "fused_steps=4", "callbacks.periodic_checkpoint.every_n_steps=10",
                     "+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=16", f"hydra.run.dir={run_dir}")
    assert killed.returncode == -9
    run = RunDir(run_dir)
    assert torch.load(run.last_checkpoint, weights_only=True)["global_step"] == 12  # the first group past step 10
    resumed = run_cli("train", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    single = single_steps["step"]
    assert {k: run.metrics()[k] for k in COMPARED} == {k: single.metrics()[k] for k in COMPARED}


@pytest.mark.parametrize(("overrides", "message"), [
    (["fused_steps=0"], "fused_steps: expected a positive integer or auto, got 0"),
    (["fused_steps=4", "trainer.max_steps=10"], "trainer.max_steps: 10 is not a multiple of fused_steps=4"),
    (["fused_steps=4", "trainer.limit_train_batches=6"], "trainer.limit_train_batches: 6 is not a multiple of fused_steps=4"),
    (["fused_steps=2", "+trainer.accumulate_grad_batches=2"],
     "trainer.accumulate_grad_batches: gradient accumulation does not combine with fused_steps=2"),
    (["fused_steps=2", "model=pca"], "fused_steps: PCA runs its own optimisation loop; use fused_steps=1"),
])
def test_settings_that_do_not_fit_fused_steps_fail_in_one_line(tmp_path, overrides, message):
    cfg = make_cfg(["trainer=cpu", "logger=none", *overrides], tmp_path)
    try:
        with pytest.raises(ConfigError) as error:
            build_run(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert str(error.value) == message


def test_the_sampler_groups_the_very_batches_of_an_unfused_epoch_and_saves_real_batches():
    single = ResumableBatchSampler(50, 4, shuffle=True, seed=3)
    grouped = ResumableBatchSampler(50, 4, shuffle=True, seed=3, group=3, consumed=lambda: 2)
    batches = list(single)
    assert len(grouped) == 5  # 13 batches in groups of 3
    assert list(grouped) == [sum(batches[i:i + 3], []) for i in range(0, 13, 3)]
    state = grouped.state_dict()
    assert state == {"epoch": 0, "batches_consumed": 6, "group": 3}
    resumed = ResumableBatchSampler(50, 4, shuffle=True, seed=3, group=3)
    resumed.load_state_dict(state)
    assert list(resumed) == [sum(batches[i:i + 3], []) for i in range(6, 13, 3)]
    other = ResumableBatchSampler(50, 4, shuffle=True, seed=3, group=2)
    with pytest.raises(ValueError, match="saved mid-epoch with fused_steps=3; resume with fused_steps=3"):
        other.load_state_dict(state)


@pytest.mark.parametrize("defer", ["false", "true"])
def test_a_non_finite_loss_inside_a_fused_group_names_its_own_step(tmp_path, capsys, defer):
    from latentbench.cli import main

    code = main(["train", "model=ae", "trainer=cpu", "logger=none", "trainer.max_epochs=2", "fused_steps=4",
                 f"callbacks.stop_on_non_finite_loss.defer={defer}", "callbacks.periodic_checkpoint.every_n_steps=5",
                 f"hydra.run.dir={tmp_path}", "+callbacks.poison._target_=tests.helpers.PoisonLossAtStep", "+callbacks.poison.step=12"])
    assert code == 1
    assert "NonFiniteLossError: train/loss became nan at step 13 (epoch 0, batch 12)" in capsys.readouterr().err
    # the periodic save of the group that went bad (steps 13-16) is not written: the last one is step 12's
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 12


def test_a_models_own_per_step_hook_runs_after_every_real_step(tmp_path, monkeypatch):
    """The LDM's EMA update and CLIP's logit-scale clamp live in the model's on_train_batch_end: with
    fused steps they still run once per optimizer step, each after its own step."""
    from latentbench.cli import main
    from latentbench.models.ae import AutoEncoder

    steps_seen = []
    monkeypatch.setattr(AutoEncoder, "on_train_batch_end",
                        lambda self, outputs, batch, batch_idx: steps_seen.append(self.trainer.global_step), raising=False)
    assert main(["train", "model=ae", "trainer=cpu", "logger=none", "trainer.max_steps=12", "fused_steps=4", "callbacks=none",
                 f"hydra.run.dir={tmp_path}"]) == 0
    assert steps_seen == list(range(1, 13))


def test_auto_fuses_a_default_run_and_trains_it_exactly_as_single_steps(single_steps, tmp_path):
    """``fused_steps: auto`` (the default) fuses a small model on in-memory data: same values, same steps."""
    result = run_cli("train", *RUN, SCHEDULERS["step"], f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fused_steps=auto: 32 optimizer steps per Lightning step (in-memory data, one process)" in result.stdout + result.stderr
    fused, single = RunDir(tmp_path), single_steps["step"]
    assert {k: fused.metrics()[k] for k in COMPARED} == {k: single.metrics()[k] for k in COMPARED}
    assert train_loss_rows(fused) == train_loss_rows(single)


class StreamingData:
    supports_fused_steps = False


@pytest.mark.parametrize(("overrides", "steps", "why"), [
    ([], 32, "in-memory data, one process"),
    (["trainer.max_steps=48"], 16, "in-memory data, one process"),
    (["trainer.max_steps=12"], 4, "in-memory data, one process"),
    (["trainer.max_steps=12", "callbacks.periodic_checkpoint.every_n_steps=10"], 2, "in-memory data, one process"),
    (["trainer.val_check_interval=6", "trainer.max_epochs=1"], 2, "in-memory data, one process"),
    (["trainer.max_steps=7"], 1, "the counts in steps [7] share no factor of 2"),
    (["model=pca"], 1, "PCA runs its own optimisation loop"),
    (["+trainer.accumulate_grad_batches=2"], 1, "gradient accumulation"),
    (["trainer.fast_dev_run=true"], 1, "trainer.fast_dev_run"),
    (["trainer.devices=2"], 1, "more than one process"),
    (["trainer.precision=16-mixed"], 1, "16-bit precision (a gradient scaler)"),
    (["streaming"], 1, "StreamingData streams its batches"),
])
def test_auto_picks_the_largest_group_that_keeps_every_count_exact(tmp_path, overrides, steps, why):
    from latentbench.train import auto_fused_steps

    cfg = make_cfg(["trainer=cpu", "logger=none", *[o for o in overrides if o != "streaming"]], tmp_path)
    try:
        built = build_run(make_cfg(["trainer=cpu", "logger=none", "fused_steps=1", "model=pca" if "model=pca" in overrides else "model=ae"],
                                   tmp_path / "built"))
    finally:
        GlobalHydra.instance().clear()
    datamodule = StreamingData() if "streaming" in overrides else built["datamodule"]
    assert auto_fused_steps(cfg, datamodule, built["model"]) == (steps, why)


class InMemoryData:
    supports_fused_steps = True
    corrupt_splits = ("train", "val", "test")

    def __init__(self, batch_size: int, image_shape: tuple[int, int, int], corruption=None):
        self.batch_size, self.image_shape, self.corruption = batch_size, image_shape, corruption


@pytest.mark.parametrize(("batch_size", "image_shape", "corrupted", "steps", "why"), [
    (128, (1, 28, 28), False, 32, "in-memory data, one process"),  # 0.4 MiB a batch
    (1024, (1, 28, 28), False, 16, "in-memory data, one process"),  # 3.1 MiB: 16 of them fit in 64 MiB
    (1024, (1, 28, 28), True, 8, "in-memory data, one process"),  # the corrupted input doubles it
    (20000, (3, 64, 64), False, 1, "a batch of 938 MiB: 2 of them exceed 64 MiB"),
])
def test_auto_keeps_a_group_of_batches_within_its_memory_budget(tmp_path, batch_size, image_shape, corrupted, steps, why):
    from latentbench.train import auto_fused_steps

    cfg = make_cfg(["trainer=cpu", "logger=none"], tmp_path)
    GlobalHydra.instance().clear()
    data = InMemoryData(batch_size, image_shape, corruption=object() if corrupted else None)
    assert auto_fused_steps(cfg, data, SimpleNamespace(automatic_optimization=True)) == (steps, why)


def saved_with_group(group: int) -> dict:
    """The part of a Lightning checkpoint that holds the training loader's saved position."""
    return {"loops": {"fit_loop": {"state_dict": {"combined_loader": [{"epoch": 0, "batches_consumed": 16, "group": group}]}}}}


@pytest.mark.parametrize(("overrides", "checkpoint", "expected"), [
    ([], saved_with_group(8), 8),  # auto: the K the run was saved with, whatever the rule picks today
    (["trainer.max_steps=12"], saved_with_group(8), "auto"),  # a count that K = 8 would break: the rule decides
    (["callbacks.periodic_checkpoint.every_n_steps=20"], saved_with_group(8), "auto"),
    (["fused_steps=4"], saved_with_group(8), 4),  # explicit: kept (the loader's restore names the mismatch)
    ([], {"state_dict": {}}, "auto"),  # a checkpoint from before fused steps
])
def test_a_resumed_auto_run_fuses_as_many_steps_as_it_was_saved_with(tmp_path, overrides, checkpoint, expected):
    from latentbench.train import adopt_saved_fused_steps

    cfg = make_cfg(["trainer=cpu", "logger=none", *overrides], tmp_path)
    GlobalHydra.instance().clear()
    adopt_saved_fused_steps(cfg, checkpoint)
    assert cfg.fused_steps == expected


def train_in_process(run_dir, *overrides: str) -> dict:
    """One epoch of the digits AE trained in this process (so that Dynamo's counters can be read)."""
    from latentbench.train import train

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    GlobalHydra.instance().clear()
    try:
        return train(make_cfg([*RUN, "trainer.max_epochs=1", *overrides], run_dir))
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("fused", [pytest.param("1", marks=pytest.mark.slow), "4"])  # K = 4 covers the evaluation steps too
def test_a_compiled_step_is_compiled_once_and_trains_as_the_eager_step(tmp_path, fused):
    """compile.enabled compiles the model's own steps, not Lightning's loop, its logging or the metrics'
    updates: a step counter read by the logging, a logged name or a metric's update count would be a
    guard that fails on the next call, and Dynamo would compile the step again until its limit."""
    eager = train_in_process(tmp_path / "eager", f"fused_steps={fused}")
    compiled = train_in_process(tmp_path / "compiled", f"fused_steps={fused}", "compile.enabled=true", "compile.backend=eager")
    assert {k: compiled[k] for k in COMPARED} == {k: eager[k] for k in COMPARED}
    # 21 today (the steps and their graph breaks around the logging, compiled again once for a dynamic
    # batch index or last short batch); over 100 when every step was compiled again
    frames = torch._dynamo.utils.counters["frames"]
    assert 0 < frames["total"] <= 30, dict(frames)


def test_a_compiled_models_eager_bookkeeping_belongs_to_each_copy(tmp_path):
    """The eager ``log`` and metric methods are bound to their own object: a deep copy of the model (an
    EMA or SWA copy) logs and updates its own metrics, not the original's."""
    import copy

    from latentbench.train import keep_bookkeeping_eager

    model = build_run(make_cfg(RUN, tmp_path))["model"]
    keep_bookkeeping_eager(model)
    twin = copy.deepcopy(model)
    assert twin.log.__self__ is twin and twin.log_dict.__self__ is twin
    for original, copied in zip(model.val_metrics.values(), twin.val_metrics.values()):
        assert copied.forward.__self__ is copied and copied is not original
    assert twin.val_metrics.update.__self__ is twin.val_metrics
    image = torch.rand(4, 1, 8, 8)
    twin.val_metrics.update(image, image)
    assert all(metric.update_count == 1 for metric in twin.val_metrics.values())
    assert all(metric.update_count == 0 for metric in model.val_metrics.values())
    GlobalHydra.instance().clear()
