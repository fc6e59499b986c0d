"""Vincent et al. 2010: the stacked denoising autoencoder (greedy layer-wise pre-training), its fine-tuning as a
classifier, the experiment's table, and the linear probe of the single-layer masking DAE (experiment=vincent2010_masking)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from latentbench.api import load
from latentbench.checkpoints import MODEL_CLASS_KEY, qualified_name
from latentbench.cli import main as cli_main
from latentbench.compose import conf_dir
from latentbench.corruptions import Masking
from latentbench.errors import ConfigError
from latentbench.errors import RunInterrupted
from latentbench.evaluation.embeddings import linear_probe_error
from latentbench.experiment import main as experiment_main
from latentbench.models.sdae import StackedDenoisingAutoEncoder
from latentbench.run_dir import resolve_checkpoint
from latentbench.models.ae import AutoEncoder
from latentbench.train import build_run, train
from tests.conftest import FAST, MNIST_ROOT, make_cfg, needs_mnist


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_linear_probe_error_separates_clusters_from_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    clustered = rng.normal(size=(200, 8)) * 0.1 + labels[:, None]
    noise = rng.normal(size=(200, 8))
    assert linear_probe_error(clustered[::2], labels[::2], clustered[1::2], labels[1::2]) == 0.0
    assert linear_probe_error(noise[::2], labels[::2], noise[1::2], labels[1::2]) > 50.0  # chance: 75 %


@needs_mnist
def test_probe_error_on_clean_mnist_codes_equals_sklearn_on_the_same_codes(cfg_factory):
    """A masking DAE on a tiny MNIST slice: test/probe_err is the error of StandardScaler + LogisticRegression
    fitted on the clean train codes, scored on the clean test codes (here recomputed outside the callback)."""
    cfg = cfg_factory("experiment=vincent2010_masking", f"data.root={MNIST_ROOT}", "data.limit=400", "data.val_size=100",
                      "model.hidden=[64]", "model.latent_dim=32", "trainer.max_epochs=2", "callbacks.embedding_plot.methods=[pca]",
                      "callbacks.embedding_plot.thumbnails=0", "callbacks.embedding_plot.score_inputs=image",
                      "callbacks.embedding_plot.probe_train_points=250")
    metrics = train(cfg)
    error = metrics["test/probe_err"]
    assert 0.0 <= error < 60.0  # 10 digit classes: chance is 90 %

    model = get_class(cfg.model._target_).load_from_checkpoint(metrics["checkpoint"], map_location="cpu", weights_only=True).eval()
    data = instantiate(cfg.data)
    data.setup("test")
    splits = data.splits
    with torch.no_grad():
        train_batch = splits["train"][list(range(min(250, len(splits["train"]))))]
        test_batch = splits["test"][list(range(min(cfg.callbacks.embedding_plot.max_points, len(splits["test"]))))]
        train_codes = model.encode(train_batch["image"]).numpy()
        test_codes = model.encode(test_batch["image"]).numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(train_codes, train_batch["label"].numpy())
    expected = 100.0 * (1.0 - probe.score(test_codes, test_batch["label"].numpy()))
    assert error == pytest.approx(expected, abs=1e-4)


def test_masking_fraction_zero_is_the_plain_autoencoder_input():
    images = torch.rand(4, 1, 8, 8)
    assert torch.equal(Masking(0.0)(images, torch.Generator().manual_seed(0)), images)
    with pytest.raises(ValueError, match=r"fraction: must lie in \[0, 1\], got -0.1"):
        Masking(-0.1)




# ----------------------------------------------------------------------------- stacked denoising autoencoders

# A 64-32-16-8 stack on the embedded 8x8 digits: 21 training steps per epoch, one epoch per layer.
STACK = [*FAST, "model=sdae", "model.hidden=[32,16,8]", "model.epochs_per_layer=1", "trainer.max_epochs=3", "deterministic=true",
         "callbacks.embedding_plot.methods=[pca]"]
LAYER = {"encoders.{k}.weight", "encoders.{k}.bias", "decoder_biases.{k}"}


@pytest.fixture(scope="module")
def stack_run(tmp_path_factory):
    """A finished stack whose weights were saved at the start and after every epoch (read-only for the tests)."""
    run_dir = tmp_path_factory.mktemp("stack") / "run"
    train(make_cfg([*STACK, "+callbacks.weights._target_=tests.helpers.SaveWeightsAtEpochEnd"], run_dir))
    GlobalHydra.instance().clear()
    return run_dir


def test_the_layer_trained_follows_the_epoch_or_the_global_step_alone():
    by_epoch = StackedDenoisingAutoEncoder([1, 8, 8], hidden=[4, 4, 4], epochs_per_layer=2)
    assert [by_epoch.layer_at(epoch, step=0) for epoch in range(8)] == [0, 0, 1, 1, 2, 2, 2, 2]  # past the schedule: the top layer
    by_step = StackedDenoisingAutoEncoder([1, 8, 8], hidden=[4, 4, 4], steps_per_layer=10)
    assert [by_step.layer_at(epoch=0, step=s) for s in (0, 9, 10, 19, 20, 99)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="set exactly one of epochs_per_layer and steps_per_layer"):
        StackedDenoisingAutoEncoder([1, 8, 8], hidden=[4], epochs_per_layer=1, steps_per_layer=1)


def test_each_epoch_trains_only_its_layer_and_the_layers_below_stay_frozen(stack_run):
    """One fit of 3 epochs, one per layer: epoch k changes layer k's weights (encoder and decoder bias) and no
    other layer's, and every layer has had its 21 steps."""
    weights = [torch.load(stack_run / "weights" / f"{name}.pt", weights_only=True) for name in ("start", "epoch0", "epoch1", "epoch2")]
    for epoch, (before, after) in enumerate(zip(weights[:-1], weights[1:])):
        changed = {name for name in before if name != "layer_steps" and not torch.equal(before[name], after[name])}
        assert changed == {name.format(k=epoch) for name in LAYER}, f"epoch {epoch}"
    assert weights[-1]["layer_steps"].tolist() == [21, 21, 21]


def test_a_fit_too_short_for_the_layer_schedule_or_with_data_noise_is_refused_before_a_step(cfg_factory):
    with pytest.raises(ConfigError, match=r"^trainer.max_epochs: 2 is too short for the layer schedule: 3 layers x "
                                          r"model.epochs_per_layer=1 = 3 epochs$"):
        train(cfg_factory(*STACK, "trainer.max_epochs=2"))
    with pytest.raises(ConfigError, match=r"^corruption: model=sdae masks each layer's input itself"):
        train(cfg_factory(*STACK, "corruption=masking"))


def test_fine_tuning_starts_from_exactly_the_pretrained_weights(stack_run, cfg_factory):
    checkpoint = resolve_checkpoint(stack_run)
    stack = StackedDenoisingAutoEncoder.load_from_checkpoint(checkpoint, weights_only=True)
    for pretrained in (stack_run, f"'{checkpoint}'"):  # a run folder, or its checkpoint (quoted: best-epoch=002.ckpt)
        model = build_run(cfg_factory("model=mlp_classifier", "model.hidden=[32,16,8]", f"model.pretrained={pretrained}"))["model"]
        for k, layer in enumerate(model.hidden_layers()):
            assert torch.equal(layer.weight, stack.encoders[k].weight) and torch.equal(layer.bias, stack.encoders[k].bias)
    random = build_run(cfg_factory("model=mlp_classifier", "model.hidden=[32,16,8]"))["model"]
    assert not torch.equal(random.hidden_layers()[0].weight, stack.encoders[0].weight)  # pretrained: null = random init


def test_the_fine_tuned_classifier_logs_test_err_and_loads_without_the_stack(stack_run, tmp_path):
    copy = tmp_path / "stack"
    shutil.copytree(stack_run, copy)
    metrics = train(make_cfg([*FAST, "model=mlp_classifier", "model.hidden=[32,16,8]", f"model.pretrained={copy}",
                              "callbacks.embedding_plot.methods=[pca]"], tmp_path / "clf"))
    assert 0.0 <= metrics["test/err"] < 90.0  # 10 digit classes, one epoch
    shutil.rmtree(copy)
    model = load(tmp_path / "clf")  # the fine-tuned weights are in its checkpoint: the stack is not read again
    assert model.pretrained_from is None and model.hparams.pretrained is None


def write_checkpoint(model: pl.LightningModule, path) -> str:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), MODEL_CLASS_KEY: qualified_name(type(model))},
               path)
    return str(path)


def test_a_pretrained_stack_that_cannot_serve_is_refused_in_one_line_naming_the_key(stack_run, cfg_factory, tmp_path):
    def error_of(*overrides: str) -> str:
        with pytest.raises(ConfigError) as caught:
            build_run(cfg_factory("model=mlp_classifier", *overrides))
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert error_of(f"model.pretrained={tmp_path}/nothing", "model.hidden=[32,16,8]") == \
        f"model.pretrained: checkpoint {tmp_path}/nothing does not exist"
    ae = write_checkpoint(AutoEncoder([1, 8, 8], hidden=[32, 16], latent_dim=8), tmp_path / "ae.ckpt")
    assert error_of(f"model.pretrained={ae}", "model.hidden=[32,16,8]") == (
        f"model.pretrained: {ae} holds a latentbench.models.ae.AutoEncoder checkpoint, expected latentbench.models.sdae.StackedDenoisingAutoEncoder")
    assert error_of(f"model.pretrained={stack_run}", "model.hidden=[32,16]").endswith(
        "holds a 64-32-16-8 stack; this classifier's hidden layers are 64-32-16 (set model.hidden=[32, 16, 8])")
    assert error_of(f"model.pretrained={stack_run}", "model.hidden=[32,16,8]", "model.activation=ReLU") == \
        "model.activation: 'ReLU' with a pre-trained stack of logistic units (model.pretrained); use Sigmoid"
    half = StackedDenoisingAutoEncoder([1, 8, 8], hidden=[32, 16, 8], epochs_per_layer=1)
    half.layer_steps[0] = 21
    path = write_checkpoint(half, tmp_path / "half.ckpt")
    assert error_of(f"model.pretrained={path}", "model.hidden=[32,16,8]") == (
        f"model.pretrained: {path}: layer(s) 2, 3 of its 3 were never trained (a checkpoint from before the end of its layer schedule?)")


def test_a_resume_in_the_middle_of_the_layer_schedule_gives_the_uninterrupted_weights(stack_run, tmp_path):
    """SIGTERM at step 30 (layer 2, 9 steps into epoch 1), resume: the same final stack, bit for bit, as the run never stopped."""
    run_dir = tmp_path / "run"
    # fused_steps=1: the signal lands on a single step (the reference run, fused, must match it bit for bit)
    signal_at = ["fused_steps=1", "+callbacks.signal._target_=tests.helpers.SignalAtHook", "+callbacks.signal.hook=train_batch_end",
                 "+callbacks.signal.n=9", "+callbacks.signal.signum=SIGTERM", "+callbacks.signal.epoch=1"]
    with pytest.raises(RunInterrupted):
        train(make_cfg([*STACK, *signal_at], run_dir))
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 30 and saved["state_dict"]["layer_steps"].tolist() == [21, 9, 0]
    train(make_cfg([*STACK, *signal_at, f"resume={run_dir}"], run_dir))
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    expected = torch.load(stack_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert final.keys() == expected.keys()
    assert [name for name in final if not torch.equal(final[name], expected[name])] == []


def test_each_fine_tuning_row_names_the_pretraining_job_of_its_seed_in_the_experiment_folder(tmp_path):
    """Stage 1's jobs land in pretrain/masking<level>_seed<seed>; stage 2's configs point there through
    paths.experiment_dir, which `latentbench experiment` gives every run."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        pretrain = compose("train", ["experiment=vincent2010_pretrain", "model.masking=0.25", "seed=2"], return_hydra_config=True)
    assert OmegaConf.select(pretrain, "hydra.sweep.subdir") == "masking0.25_seed2"
    for row, expected in (("vincent2010_mlp", None), ("vincent2010_sae3", f"{tmp_path}/pretrain/masking0.0_seed2"),
                          ("vincent2010_sdae3", f"{tmp_path}/pretrain/masking0.25_seed2")):
        cfg = make_cfg([f"experiment={row}", f"paths.experiment_dir={tmp_path}", "seed=2"], tmp_path / row)
        assert cfg.model.pretrained == expected and cfg.model.hidden == [1000, 1000, 1000] and cfg.model.activation == "Sigmoid"


def test_every_run_of_an_experiment_gets_the_experiments_folder(tmp_path, monkeypatch):
    calls = []

    def fake_train(args):
        calls.append(args)
        sweep_dir = next(a for a in args if a.startswith("hydra.sweep.dir=")).partition("=")[2]
        Path(sweep_dir).mkdir(parents=True)
        return 0

    monkeypatch.setattr("latentbench.launch.run_train", fake_train)
    monkeypatch.setattr("latentbench.report.main", lambda argv: 0)
    out = tmp_path / "out"
    assert experiment_main(["vincent2010", "--quick", "--out", str(out)]) == 0
    assert [a[a.index("-m") + 1] for a in calls] == [f"paths.experiment_dir={out.resolve()}"] * 2  # pretrain, then table
    assert "experiment=vincent2010_pretrain" in calls[0] and "experiment=vincent2010_mlp,vincent2010_sae3,vincent2010_sdae3" in calls[1]


def test_overrides_written_after_only_reach_the_runs_and_a_misspelled_run_is_named(tmp_path, monkeypatch):
    """`--only table trainer.max_epochs=2`: argparse gives --only every word after it; the overrides among them are overrides."""
    calls = []

    def fake_train(args):
        calls.append(args)
        Path(next(a for a in args if a.startswith("hydra.sweep.dir=")).partition("=")[2]).mkdir(parents=True)
        return 0

    monkeypatch.setattr("latentbench.launch.run_train", fake_train)
    monkeypatch.setattr("latentbench.report.main", lambda argv: 0)
    assert experiment_main(["vincent2010", "--only", "table", "trainer.max_epochs=2", "--out", str(tmp_path / "out")]) == 0
    assert len(calls) == 1 and "experiment=vincent2010_mlp,vincent2010_sae3,vincent2010_sdae3" in calls[0]
    assert "trainer.max_epochs=2" in calls[0]
    with pytest.raises(ConfigError, match=r"experiment --only: tabel \(runs of vincent2010: pretrain, table\)"):
        experiment_main(["vincent2010", "--only", "tabel", "trainer.max_epochs=2", "--out", str(tmp_path / "other")])


@pytest.mark.slow  # 5 runs and 2 reports: 30-50 s on 2 shared CPU cores; the chaining it relies on is checked above
@needs_mnist
def test_vincent2010_quick_mode_writes_the_three_rows_with_the_paper_column(tmp_path, capsys):
    """The documented experiment command, quick and tiny: two stacks (SAE, SDAE) pre-trained, then the three
    classifiers (no pre-training, SAE-3, SDAE-3) fine-tuned, one seed; each pre-trained row starts from its stack."""
    out = tmp_path / "vincent2010"
    assert cli_main(["experiment", "vincent2010", "--quick", "--out", str(out), f"data.root={MNIST_ROOT}", "data.limit=300",
                     "data.val_size=100", "model.hidden=[64,32,16]"]) == 0
    rows = {r["choices.experiment"]: r for r in read_csv(out / "report" / "table.csv")}
    assert set(rows) == {"vincent2010_mlp", "vincent2010_sae3", "vincent2010_sdae3"}
    for name, paper in (("vincent2010_mlp", ""), ("vincent2010_sae3", "1.4"), ("vincent2010_sdae3", "1.28")):
        row = rows[name]
        assert row["n"] == "1" and row["failed"] in ("", "0")
        assert 0.0 <= float(row["test/err mean"]) <= 100.0
        assert row["test/err (paper)"] == paper
    assert (out / "pretrain" / "masking0.0_seed1" / "metrics.json").is_file() and (out / "pretrain" / "masking0.25_seed1").is_dir()
    for name, stack in (("vincent2010_sae3", "masking0.0_seed1"), ("vincent2010_sdae3", "masking0.25_seed1")):
        [run] = [p for p in (out / "table").iterdir() if name in p.name]
        checkpoint = torch.load(resolve_checkpoint(run), weights_only=True)
        assert checkpoint["pretrained_from"] == resolve_checkpoint(out.resolve() / "pretrain" / stack)
    table = (out / "report" / "table.md").read_text()
    assert "Quick mode" in table and "Vincent et al., JMLR 11:3371 (2010), Table 3" in table
    assert {r["model.masking"] for r in read_csv(out / "report" / "pretrain.csv")} == {"0", "0.25"}
    assert "table: " in capsys.readouterr().out
