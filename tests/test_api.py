"""The Python API: ``latentbench.train`` / ``load`` / ``runs`` round trip on the embedded digits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

import latentbench
from latentbench.checkpoints import MODEL_CLASS_KEY
from latentbench.cli import main as cli_main
from latentbench.errors import ConfigError
from latentbench.models.ae import AutoEncoder
from latentbench.models.pca import PCA
from latentbench.run_dir import RunDir
from latentbench.train import train as train_config
from tests.conftest import FAST

TINY = [*FAST, "data=digits", "data.limit=300", "callbacks.embedding_plot.methods=[pca]"]
AE = ["model=ae", *TINY, "model.latent_dim=8"]
PCA_RUN = ["model=pca", *TINY, "model.n_components=5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two runs trained through the API under one folder, plus a copy nested as a multirun job."""
    root = tmp_path_factory.mktemp("runs")
    ae = latentbench.train(overrides=AE, run_dir=root / "ae")
    pca = latentbench.train(PCA_RUN, run_dir=root / "pca")
    shutil.copytree(root / "pca", root / "multirun" / "2026-01-01_00-00-00" / "0")
    return root, ae, pca


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message, message
    return message


def test_train_returns_the_metrics_json_of_an_ordinary_run_directory(trained):
    root, ae, pca = trained
    for metrics, overrides, name in ((ae, AE, "ae"), (pca, PCA_RUN, "pca")):
        assert metrics.run_dir == root / name
        assert metrics == json.loads((root / name / "metrics.json").read_text())
        assert metrics["status"] == "finished" and metrics["test/recon_sse"] > 0
        run = RunDir(metrics.run_dir)
        assert run.overrides() == overrides  # what resume=, eval and report read
        assert run.status() == "finished" and (run.hydra_dir / "hydra.yaml").is_file()
    assert RunDir(ae.run_dir).recorded_config().model._target_ == "latentbench.models.ae.AutoEncoder"
    assert ae["checkpoint"].startswith("checkpoints/best")  # validated, so tested with its best checkpoint


def test_load_of_a_run_gives_its_class_with_the_weights_it_was_tested_with(trained, tmp_path):
    root, ae, _ = trained
    model = latentbench.load(ae.run_dir)
    assert type(model) is AutoEncoder and not model.training
    assert next(model.parameters()).device == torch.device("cpu")
    tested = torch.load(root / "ae" / ae["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert model.state_dict().keys() == tested.keys()
    assert all(torch.equal(model.state_dict()[k], tested[k]) for k in tested)
    # the loaded model reproduces the run's test results on its test split
    datamodule = instantiate(RunDir(ae.run_dir).recorded_config().data)
    tester = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    results = tester.test(model, datamodule=datamodule, verbose=False)[0]
    assert results["test/recon_sse"] == pytest.approx(ae["test/recon_sse"], rel=1e-5)
    assert results["test/loss"] == pytest.approx(ae["test/loss"], rel=1e-5)


def test_load_of_a_checkpoint_file_reconstructs_as_its_class_does(trained):
    root, _, pca = trained
    for file, cls in ((root / "ae" / "checkpoints" / "last.ckpt", AutoEncoder), (root / "pca" / pca["checkpoint"], PCA)):
        model = latentbench.load(file)
        assert type(model) is cls and not model.training
        reference = cls.load_from_checkpoint(file, map_location="cpu", weights_only=True).eval()
        batch = torch.rand(4, *model.input_shape)
        with torch.no_grad():
            assert torch.equal(model(batch), reference(batch))


def test_load_takes_the_class_from_the_run_config_when_the_checkpoint_does_not_name_it(trained, tmp_path):
    root, ae, _ = trained
    copy = tmp_path / "ae"
    shutil.copytree(root / "ae", copy)
    for file in (copy / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
        del checkpoint[MODEL_CLASS_KEY]
        torch.save(checkpoint, file)
    assert type(latentbench.load(copy)) is AutoEncoder
    stray = tmp_path / "stray.ckpt"
    shutil.copy(copy / "checkpoints" / "last.ckpt", stray)
    with pytest.raises(ConfigError) as error:
        latentbench.load(stray)
    assert "does not record its model class" in one_line(error)


def test_load_says_in_one_line_what_a_path_is_not(trained, tmp_path):
    root, _, _ = trained
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    expected = {
        tmp_path / "missing": "does not exist",
        tmp_path / "empty": "is neither a run directory",
        tmp_path / "notes.txt": "is not a readable checkpoint",
        root / "multirun" / "2026-01-01_00-00-00": "it holds the runs 0: load one of them",
    }
    for path, words in expected.items():
        with pytest.raises(ConfigError) as error:
            latentbench.load(path)
        assert words in one_line(error), path


def test_runs_has_one_row_per_run_with_override_and_metric_columns(trained):
    root, ae, pca = trained
    table = latentbench.runs(root)
    assert sorted(table["run"]) == ["ae", "multirun/2026-01-01_00-00-00/0", "pca"]
    assert list(table.columns[:3]) == ["run", "status", "overrides"] and list(table.columns[-2:]) == ["error", "path"]
    assert set(table["status"]) == {"finished"}
    rows = table.set_index("run")
    assert rows.loc["ae", "overrides"] == AE
    assert rows.loc["ae", "choices.model"] == "ae" and rows.loc["pca", "choices.model"] == "pca"
    assert rows.loc["ae", "model.latent_dim"] == 8 and rows.loc["pca", "model.n_components"] == 5
    assert rows.loc["ae", "trainer.max_epochs"] == 1 and rows.loc["ae", "data.limit"] == 300
    for name, metrics in (("ae", ae), ("pca", pca), ("multirun/2026-01-01_00-00-00/0", pca)):
        for key, value in metrics.items():
            if key not in ("status", "error"):
                assert rows.loc[name, key] == value, (name, key)
    assert latentbench.load(rows.loc["ae", "path"]).state_dict().keys() == latentbench.load(ae.run_dir).state_dict().keys()
    compact = latentbench.runs(root, config=False)
    assert {"choices.model", "model.latent_dim", "test/recon_sse"} <= set(compact.columns)
    assert "model.hidden" not in compact.columns and "model.hidden" in table.columns
    assert len(latentbench.runs(root / "ae")) == 1


def test_runs_of_a_folder_without_runs_is_empty_and_of_a_missing_one_an_error(tmp_path):
    assert latentbench.runs(tmp_path).empty
    with pytest.raises(ConfigError) as error:
        latentbench.runs(tmp_path / "missing")
    assert "does not exist" in one_line(error)


def cli_error(capsys, *args: str) -> str:
    assert cli_main(["train", *args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_bad_override_raises_the_line_the_command_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    # refused before Hydra runs (preflight: keys, and values of latentbench's own targets), and inside
    # the job (check_config: another package's class, here Lightning's Trainer, is imported only there)
    for bad, name in ((["trainer.max_epoch=1"], "key"), (["seed=abc"], "value"), (["+trainer.foo=1"], "job")):
        printed = cli_error(capsys, *TINY, *bad, f"hydra.run.dir={tmp_path / ('cli_' + name)}")
        with pytest.raises(ConfigError) as error:
            latentbench.train([*TINY, *bad], run_dir=tmp_path / f"api_{name}")
        assert printed == f"error: {one_line(error)}"
    assert not (tmp_path / "api_value" / ".hydra").exists()  # refused before Hydra wrote anything
    with pytest.raises(ConfigError) as error:  # Hydra wrote the run's .hydra/, then the check refused it
        latentbench.load(tmp_path / "api_job")
    assert "has no checkpoint" in one_line(error)
    for bad, words in (("-m", "use the command line"), ("model=ae", "expected a list")):
        with pytest.raises(ConfigError) as error:
            latentbench.train(bad if bad != "-m" else [bad])
        assert words in one_line(error)


def test_latentbench_train_is_the_module_and_the_api_function():
    import latentbench.train as train_module
    from latentbench import train

    assert train is train_module is latentbench.train is sys.modules["latentbench.train"]
    assert train_module.train is train_config  # train(cfg) of a composed config, as before
    assert callable(latentbench.train)
    with pytest.raises(ConfigError, match="^train: -m: the Python API"):  # reached the API, not a module
        latentbench.train(overrides=["-m", "model=pca,ae"])
    assert {"train", "load", "runs", "api"} <= set(dir(latentbench))


def test_import_latentbench_imports_no_torch_lightning_hydra_or_pandas():
    heavy = ("torch", "pytorch_lightning", "lightning", "hydra", "omegaconf", "pandas", "wandb")
    code = f"import sys, latentbench; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
