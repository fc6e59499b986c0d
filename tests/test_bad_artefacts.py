"""Every command on bad run artefacts: one line naming the file, exit 2; report leaves unreadable runs out."""

from __future__ import annotations

import json
import shutil

import pytest

from latentbench.cli import main
from latentbench.run_dir import RunDir

TINY = ["trainer=cpu", "logger=none", "trainer.max_epochs=1", "data.limit=300", "callbacks.embedding_plot.methods=[pca]"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished AE run and a finished PCA run (copy them before changing them)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "model=ae", *TINY, f"hydra.run.dir={root / 'ae'}"]) == 0
    assert main(["train", "model=pca", "model.n_components=4", *TINY, f"hydra.run.dir={root / 'pca'}"]) == 0
    return root


@pytest.fixture
def ae_run(runs, tmp_path):
    shutil.copytree(runs / "ae", tmp_path / "ae")
    return RunDir(tmp_path / "ae")


def last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "nothing on stderr"
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_eval_of_a_truncated_checkpoint(ae_run, capsys):
    checkpoint = ae_run.last_checkpoint
    checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    assert main(["eval", f"checkpoint={checkpoint}"]) == 2
    assert last_error(capsys).startswith(f"error: checkpoint: {checkpoint} is not a readable checkpoint (truncated or corrupt?")


def test_eval_of_a_checkpoint_of_another_model(ae_run, runs, capsys):
    foreign = ae_run.checkpoint_dir / "from_pca.ckpt"
    shutil.copy(runs / "pca" / "checkpoints" / "last.ckpt", foreign)
    assert main(["eval", f"checkpoint={foreign}"]) == 2
    assert last_error(capsys) == (f"error: checkpoint: {foreign} holds a latentbench.models.pca.PCA checkpoint, "
                                  "expected latentbench.models.ae.AutoEncoder")


def test_eval_of_a_checkpoint_of_another_data_shape(ae_run, capsys):
    assert main(["eval", f"checkpoint={ae_run.last_checkpoint}", "data.pad_to=16"]) == 2
    line = last_error(capsys)
    assert line.startswith(f"error: checkpoint: {ae_run.last_checkpoint} does not fit this run's model and data (size mismatch for ")
    assert "torch.Size([" in line


@pytest.mark.parametrize("content", ["", "{\"status\": \"fini", "[1, 2]", "\xff\xfe"])
def test_a_corrupt_metrics_json_is_named_by_eval_and_resume(ae_run, capsys, content):
    ae_run.metrics_file.write_bytes(content.encode("latin-1"))
    assert main(["eval", f"checkpoint={ae_run.last_checkpoint}"]) == 2
    assert last_error(capsys).startswith(f"error: {ae_run.metrics_file}: ")
    assert main(["train", f"resume={ae_run.path}"]) == 2
    assert last_error(capsys).startswith(f"error: {ae_run.metrics_file}: ")
    assert ae_run.metrics_file.read_bytes() == content.encode("latin-1")  # left as it was


def test_a_corrupt_run_json_is_named(ae_run, capsys):
    ae_run.info_file.write_text("{ not json")
    assert main(["train", f"resume={ae_run.path}"]) == 2
    assert last_error(capsys).startswith(f"error: {ae_run.info_file}: not valid JSON")


def test_embeddings_of_a_run_without_checkpoints(ae_run, runs, capsys, tmp_path):
    shutil.rmtree(ae_run.checkpoint_dir)
    assert main(["embeddings", str(ae_run.path), str(runs / "pca"), "--out", str(tmp_path / "e.png")]) == 2
    assert last_error(capsys) == f"error: {ae_run.path}: no checkpoint found (expected metrics.json's checkpoint or checkpoints/*.ckpt)"


def test_a_run_of_the_older_layout_with_absolute_paths_still_evaluates(ae_run, capsys, tmp_path):
    """Runs written before paths were relative stored absolute checkpoint paths; moved, they still serve."""
    metrics = ae_run.metrics()
    metrics["checkpoint"] = f"/somewhere/else/{ae_run.path.name}/{metrics['checkpoint']}"
    ae_run.metrics_file.write_text(json.dumps(metrics))
    tested = ae_run.tested_checkpoint()
    assert tested == ae_run.path / "checkpoints" / "best-epoch=000.ckpt"
    assert main(["eval", f"checkpoint={tested}"]) == 0
    assert ae_run.metrics()["eval"]["checkpoint"] == "checkpoints/best-epoch=000.ckpt"


def test_report_leaves_unreadable_runs_out_and_counts_them(runs, tmp_path, capsys):
    root = tmp_path / "sweep"
    for n in range(3):
        shutil.copytree(runs / "ae", root / str(n))
    (root / "1" / "metrics.json").write_text("{truncat")
    (root / "2" / ".hydra" / "config.yaml").write_text("model: [unclosed")
    assert main(["report", str(root), "--group-by", "model._target_", "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "| AutoEncoder | " in out and " | 1 |  |" in out  # one readable run in the table, none failed
    assert "2 unreadable runs left out of the table" in out
    assert f"1: unreadable ({root / '1' / 'metrics.json'}: not valid JSON" in out
    assert f"2: unreadable ({root / '2' / '.hydra' / 'config.yaml'}: cannot be read" in out
    assert "2 unreadable runs left out of the table" in (root / "report" / "table.md").read_text()
