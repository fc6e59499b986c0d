"""``latentbench report``: aggregation over seeds, failed/missing runs, the four formats, plots, training curves, run
names, quick-mode marks, HTML in a browser."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from latentbench.cli import main as cli_main
from latentbench.curves import history_csv
from latentbench.report import Run, codes_panel_title, group_curve, main as report_main
from latentbench.train import train
from tests.conftest import MNIST_ROOT, make_cfg, needs_mnist

# 2 configs x 3 seeds: (model target, latent_dim, seed) -> recon_sse
SSE = {
    ("latentbench.models.ae.AutoEncoder", 8, 1): 10.0, ("latentbench.models.ae.AutoEncoder", 8, 2): 12.0,
    ("latentbench.models.ae.AutoEncoder", 8, 3): 14.0,
    ("latentbench.models.pca.PCA", 8, 1): 20.0, ("latentbench.models.pca.PCA", 8, 2): 20.5,
    ("latentbench.models.pca.PCA", 8, 3): 21.5,
}


def write_run(run_dir: Path, config: dict, metrics: dict | None, image: bool = False) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if image:
        (run_dir / "images").mkdir()
        for step, shade in ((2, 50), (7, 200)):
            Image.fromarray(np.full((16, 32, 3), shade, np.uint8)).save(run_dir / "images" / f"test_reconstructions_{step:06d}.png")


@pytest.fixture
def multirun(tmp_path) -> Path:
    """A Hydra-multirun-shaped folder: 6 finished runs, one failed run, one killed run, one run without model.latent_dim."""
    root = tmp_path / "multirun" / "2026-01-01_00-00-00"
    for n, ((target, latent, seed), sse) in enumerate(SSE.items()):
        config = {"model": {"_target_": target, "latent_dim": latent}, "seed": seed, "data": {"limit": 100}}
        write_run(root / str(n), config, {"status": "finished", "test/recon_sse": sse, "test/psnr": 30 - sse, "seed": seed}, image=n == 0)
    write_run(root / "6", {"model": {"_target_": "latentbench.models.ae.AutoEncoder", "latent_dim": 8}, "seed": 4},
              {"status": "failed", "error": "NonFiniteLossError: train/loss is nan at step 3"})
    write_run(root / "7", {"model": {"_target_": "latentbench.models.ae.AutoEncoder", "latent_dim": 8}, "seed": 5}, None)
    write_run(root / "8", {"model": {"_target_": "latentbench.models.pca.PCA"}, "seed": 1},
              {"status": "finished", "test/recon_sse": 40.0, "test/psnr": 1.0})
    return root


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_mean_std_and_n_over_seeds(multirun, tmp_path, capsys):
    out = tmp_path / "report"
    assert report_main([str(multirun), "--group-by", "model._target_", "model.latent_dim", "--metrics", "test/recon_sse", "test/psnr",
                        "--out", str(out)]) == 0
    rows = {(r["model._target_"], r["model.latent_dim"]): r for r in read_csv(out / "table.csv")}
    ae = rows[("AutoEncoder", "8")]
    assert float(ae["test/recon_sse mean"]) == pytest.approx(12.0)
    assert float(ae["test/recon_sse std"]) == pytest.approx(statistics.stdev([10, 12, 14]))
    assert ae["n"] == "3" and ae["failed"] == "2"  # one failed, one without metrics.json
    pca = rows[("PCA", "8")]
    assert float(pca["test/recon_sse mean"]) == pytest.approx(np.mean([20, 20.5, 21.5]))
    assert float(pca["test/psnr std"]) == pytest.approx(np.std([10, 9.5, 8.5], ddof=1))
    assert pca["n"] == "3"
    blank = rows[("PCA", "")]  # config without model.latent_dim: blank cell, its own row
    assert float(blank["test/recon_sse mean"]) == 40.0 and blank["n"] == "1"

    markdown = (out / "table.md").read_text()
    assert "| AutoEncoder | 8 | 12.000 ± 2.000 | 18.000 ± 2.000 | 3 | 2 |" in markdown
    assert "| PCA |  | 40.000 | 1.000 | 1 |  |" in markdown
    assert "6: failed (NonFiniteLossError: train/loss is nan at step 3)" in markdown
    assert "7: missing (no metrics.json" in markdown
    assert "12.000 ± 2.000" in capsys.readouterr().out

    latex = (out / "table.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{llrrrr}"):
        assert rule in latex
    assert r"AutoEncoder & 8 & $12.000 \pm 2.000$ & $18.000 \pm 2.000$ & 3 & 2 \\" in latex
    assert r"model.\_target\_" in latex


def test_group_of_only_failed_runs_shows_failed_cells(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "a", {"model": {"_target_": "x.Bad"}, "seed": 1}, {"status": "failed", "error": "ValueError: lr"})
    write_run(root / "b", {"model": {"_target_": "x.Killed"}, "seed": 1}, None)
    write_run(root / "c", {"model": {"_target_": "x.Good"}, "seed": 1}, {"status": "finished", "test/recon_sse": 1.5})
    report_main([str(root), "--metrics", "test/recon_sse", "test/ssim", "--out", str(tmp_path / "r")])
    markdown = (tmp_path / "r" / "table.md").read_text()
    assert "| Bad | failed | failed | 0 | 1 |" in markdown
    assert "| Killed | missing | missing | 0 | 1 |" in markdown
    assert "| Good | 1.500 | missing | 1 |  |" in markdown  # finished, but test/ssim was never logged


def test_reference_column_and_plot(multirun, tmp_path):
    reference = tmp_path / "reference.yaml"
    reference.write_text(yaml.safe_dump({
        "source": "Some et al. 2006, Table 1",
        "rows": [{"match": {"model._target_": "PCA", "model.latent_dim": 8}, "values": {"test/recon_sse": 13.87}}],
    }))
    out = tmp_path / "r"
    report_main([str(multirun), "--group-by", "model._target_", "--metrics", "test/recon_sse", "--reference", str(reference),
                 "--plot", "test/recon_sse", "--against", "seed", "--out", str(out)])
    rows = read_csv(out / "table.csv")
    assert rows[0]["model._target_"] == "AutoEncoder" and rows[0]["test/recon_sse (paper)"] == ""
    assert rows[1]["model._target_"] == "PCA"
    # the PCA group also holds the run without latent_dim, so the reference row (latent_dim 8) does not match it
    assert rows[1]["test/recon_sse (paper)"] == ""
    report_main([str(multirun), "--group-by", "model._target_", "model.latent_dim", "--metrics", "test/recon_sse",
                 "--reference", str(reference), "--out", str(out)])
    paper = {(r["model._target_"], r["model.latent_dim"]): r["test/recon_sse (paper)"] for r in read_csv(out / "table.csv")}
    assert paper == {("AutoEncoder", "8"): "", ("PCA", "8"): "13.87", ("PCA", ""): ""}
    assert "Some et al. 2006, Table 1" in (out / "table.md").read_text()
    with Image.open(out / "test_recon_sse_vs_seed.png") as image:
        assert image.size[0] > 300 and len(set(image.convert("L").getdata())) > 10


def test_html_is_self_contained_with_latest_images(multirun, tmp_path):
    out = tmp_path / "r"
    report_main([str(multirun), "--format", "html", "--plot", "test/psnr", "--against", "seed", "--out", str(out)])
    page = (out / "table.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # the plot and run 0's newest grid (step 7, not step 2)
    assert "src='http" not in page and "<script" not in page and "<link" not in page
    assert "test_reconstructions" in page and "failed" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(multirun, tmp_path):
    out = tmp_path / "r"
    report_main([str(multirun), "--format", "html", "--plot", "test/psnr", "--against", "seed", "--out", str(out)])
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1200,900",
                    (out / "table.html").resolve().as_uri()], capture_output=True, timeout=120, check=False)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape == (900, 1200)
    assert (pixels < 128).mean() > 0.005  # text and the plot drew dark pixels on the white page


def test_report_on_real_runs(tmp_path):
    """Two real PCA runs (2 seeds) and a real AE run, written as Hydra would, then reported."""
    root = tmp_path / "multirun"
    for n, (model, seed) in enumerate([("pca", 1), ("pca", 2), ("ae", 1)]):
        run_dir = root / str(n)
        extra = ["model.n_components=8"] if model == "pca" else []
        cfg = make_cfg(["trainer=cpu", "logger=none", "trainer.max_epochs=1", "data.limit=200", f"model={model}", f"seed={seed}", *extra], run_dir)
        metrics = train(cfg)
        (run_dir / ".hydra").mkdir()
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
        if model == "pca":
            expected = metrics["test/recon_sse"]
    out = tmp_path / "r"
    report_main([str(root), "--group-by", "model._target_", "model.n_components", "--metrics", "test/recon_sse", "--out", str(out),
                 "--format", "csv", "html"])
    rows = {r["model._target_"]: r for r in read_csv(out / "table.csv")}
    assert rows["PCA"]["n"] == "2" and rows["PCA"]["model.n_components"] == "8"
    assert float(rows["PCA"]["test/recon_sse mean"]) == pytest.approx(expected, rel=1e-6)  # PCA is exact: seeds agree
    assert rows["AutoEncoder"]["model.n_components"] == "" and rows["AutoEncoder"]["n"] == "1"
    page = (out / "table.html").read_text()
    assert "test_reconstructions" in page and "alt='training curves'" in page  # each run wrote its history.csv


def test_wandb_source_offline_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert cli_main(["report", "wandb:someone/latentbench"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "W&B API online" in err and "WANDB_API_KEY" in err


def test_missing_source_and_plot_without_against(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    assert "no runs under" in capsys.readouterr().err
    write_run(tmp_path / "one", {"seed": 1}, {"status": "finished", "test/recon_sse": 1.0})
    assert cli_main(["report", str(tmp_path / "one"), "--plot", "test/recon_sse"]) == 2
    assert "--against" in capsys.readouterr().err


@pytest.mark.slow  # 20+ s; the quick-mode header is checked on hand-made runs by test_tables_of_quick_experiment_runs_say_so_in_their_header
@needs_mnist
def test_hinton2006_quick_mode_writes_its_tables(tmp_path, capsys):
    """The documented experiment command, quick and tiny: 2 configs x 2 seeds, then the 2-D codes figure."""
    out = tmp_path / "hinton2006"
    assert cli_main(["experiment", "hinton2006", "--quick", "--out", str(out), f"data.root={MNIST_ROOT}", "data.limit=300",
                     "data.val_size=100"]) == 0
    rows = {r["choices.experiment"]: r for r in read_csv(out / "report" / "table.csv")}
    assert set(rows) == {"hinton2006_pca30", "hinton2006_ae30"}
    for name, paper in (("hinton2006_pca30", 13.87), ("hinton2006_ae30", 3.0)):
        assert rows[name]["n"] == "2" and rows[name]["failed"] == "0"
        assert 0 < float(rows[name]["test/recon_sse mean"]) < 200  # squared error per 784-pixel image
        assert float(rows[name]["test/recon_sse (paper)"]) == paper
    assert float(rows["hinton2006_pca30"]["test/recon_sse std"]) == pytest.approx(0, abs=1e-4)  # PCA: no seed dependence
    for suffix, name in (("md", "hinton2006_pca30"), ("html", "hinton2006_pca30"), ("tex", r"hinton2006\_pca30")):
        assert name in (out / "report" / f"table.{suffix}").read_text()
    assert r"\toprule" in (out / "report" / "table.tex").read_text()
    header = (out / "report" / "table.md").read_text().splitlines()[0]  # the quick budget, command-line overrides included
    assert header.startswith("**Quick mode (latentbench experiment hinton2006 --quick: ") and "data.limit=300" in header
    assert "(quick mode)</title>" in (out / "report" / "codes.html").read_text()
    codes = {r["choices.experiment"]: r for r in read_csv(out / "report" / "codes.csv")}
    assert set(codes) == {"hinton2006_pca2", "hinton2006_ae2"}
    assert all(0.1 < float(r["test/knn_acc mean"]) <= 1 for r in codes.values())  # 2-D codes beat chance
    with Image.open(out / "report" / "codes.png") as image:
        assert image.size[0] > 2 * image.size[1] * 0.9  # two panels side by side
    assert "table: " in capsys.readouterr().out


def test_reference_from_csv(multirun, tmp_path):
    reference = tmp_path / "paper.csv"
    reference.write_text("model._target_,metric,value,source\nPCA,test/recon_sse,13.87,Science 2006\nAutoEncoder,test/recon_sse,3.00,Science 2006\n")
    out = tmp_path / "r"
    report_main([str(multirun), "--metrics", "test/recon_sse", "test/psnr", "--reference", str(reference), "--out", str(out)])
    rows = {r["model._target_"]: r for r in read_csv(out / "table.csv")}
    assert float(rows["PCA"]["test/recon_sse (paper)"]) == 13.87 and float(rows["AutoEncoder"]["test/recon_sse (paper)"]) == 3.0
    assert "test/psnr (paper)" not in rows["PCA"]  # no paper value for that metric: no column


# -- formats, training curves, run names, quick mode -------------------------------------------------


def write_history(run_dir: Path, rows: list[dict]) -> None:
    (run_dir / "history.csv").write_text(history_csv(rows))


def write_overrides(run_dir: Path, overrides: list[str]) -> None:
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))


@pytest.fixture
def with_curves(multirun) -> Path:
    """The multirun with a history for each finished run: the AE seeds' losses scale with the seed; PCA's stay put."""
    for n, (target, _, seed) in enumerate(SSE):
        if target.endswith("AutoEncoder"):
            scale = 1 + 0.1 * seed
            rows = [{"step": step, "epoch": 0, "train/loss": loss * scale} for step, loss in ((10, 1.0), (20, 0.5), (30, 0.25))]
            rows += [{"step": 30, "epoch": 0, "val/loss": 0.3 * scale, "val/psnr": 20.0 + seed}]
        else:
            rows = [{"step": 5, "epoch": 0, "val/loss": 0.2, "val/psnr": 25.0}, {"step": 25, "epoch": 1, "val/loss": 0.2, "val/psnr": 25.0}]
        write_history(multirun / str(n), rows)
    return multirun


def test_every_format_by_default_and_exactly_the_ones_asked(with_curves, tmp_path, capsys):
    report_main([str(with_curves), "--out", str(tmp_path / "all")])
    assert {p.name for p in (tmp_path / "all").iterdir()} == {"table.md", "table.tex", "table.csv", "table.html", "table_training_curves.png"}
    report_main([str(with_curves), "--format", "md,csv", "--out", str(tmp_path / "two")])
    assert {p.name for p in (tmp_path / "two").iterdir()} == {"table.md", "table.csv"}
    report_main([str(with_curves), "--format", "tex", "html,md", "--out", str(tmp_path / "mixed")])  # spaces and commas
    assert {p.suffix for p in (tmp_path / "mixed").iterdir()} == {".tex", ".html", ".md", ".png"}
    capsys.readouterr()
    assert cli_main(["report", str(with_curves), "--format", "md,pdf", "--out", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err.strip() == ("error: report --format: pdf is not a format (choose from md, tex, csv, html, "
                                               "comma- or space-separated)")


def test_a_groups_curve_is_the_mean_and_std_of_its_runs_interpolated_onto_common_steps():
    def run(points: dict[int, float], status: str = "finished") -> Run:
        import pandas as pd

        return Run("r", {}, {}, status, history=pd.DataFrame({"step": list(points), "val/loss": list(points.values())}))

    stats = group_curve([run({10: 1.0, 30: 3.0}), run({10: 1.0, 20: 1.0, 30: 1.0}), run({10: 50.0}, "failed")], "val/loss")
    assert stats.index.tolist() == [10, 20, 30]
    assert stats["mean"].tolist() == [1.0, 1.5, 2.0]  # the first run's step 20 is interpolated (2.0); the failed run is left out
    assert stats["n"].tolist() == [2, 2, 2]
    assert stats["std"].tolist() == pytest.approx([0.0, np.std([2, 1], ddof=1), np.std([3, 1], ddof=1)])
    assert group_curve([run({10: 1.0})], "train/loss").empty


def test_html_draws_the_training_curves_one_colour_per_group(with_curves, tmp_path):
    out = tmp_path / "r"
    written = report_main([str(with_curves), "--format", "html", "md", "--out", str(out)]) == 0 and out
    page = (written / "table.html").read_text()
    assert "<h2>Training curves</h2>" in page and "alt='training curves'" in page
    assert "![training curves](table_training_curves.png)" in (out / "table.md").read_text()
    with Image.open(out / "table_training_curves.png") as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # matplotlib's first two colours: AutoEncoder, PCA
        assert (np.abs(pixels - colour).sum(axis=1) < 30).sum() > 50, colour
    panels = tmp_path / "only"  # --curves names the panels (and draws them without html)
    report_main([str(with_curves), "--format", "csv", "--curves", "train/loss", "--out", str(panels)])
    assert (panels / "table_training_curves.png").is_file()


def test_run_cards_are_named_by_the_overrides_that_set_runs_apart(tmp_path):
    root = tmp_path / "multirun"
    for n, (model, seed) in enumerate([("pca", 1), ("pca", 2), ("ae", 1)]):
        write_run(root / str(n), {"model": {"_target_": model}, "seed": seed}, {"status": "finished", "test/recon_sse": 1.0})
        write_overrides(root / str(n), [f"model={model}", "data=digits", f"seed={seed}", "trainer.max_epochs=1"])
    report_main([str(root), "--format", "html", "--out", str(tmp_path / "r")])
    page = (tmp_path / "r" / "table.html").read_text()
    for n, name in enumerate(["model=pca,seed=1", "model=pca,seed=2", "model=ae,seed=1"]):
        assert f"<h3>{name} <span class='src'>{n}</span></h3>" in page
    assert "data=digits" not in page  # the same for every run: no part of a name
    write_run(tmp_path / "single", {"seed": 1}, {"status": "finished", "test/recon_sse": 1.0})
    write_overrides(tmp_path / "single", ["seed=1"])
    report_main([str(tmp_path / "single"), "--format", "html", "--out", str(tmp_path / "s")])
    assert "<h3>single</h3>" in (tmp_path / "s" / "table.html").read_text()  # nothing to tell apart: the folder name


def test_tables_of_quick_experiment_runs_say_so_in_their_header(multirun, tmp_path):
    experiment = multirun.parent
    (experiment / "experiment.json").write_text(json.dumps({"experiment": "hinton2006", "mode": "quick",
                                                            "overrides": ["data.limit=1000", "trainer.max_epochs=1"]}))
    out = tmp_path / "r"
    report_main([str(multirun), "--title", "Hinton 2006", "--out", str(out)])
    note = "Quick mode (latentbench experiment hinton2006 --quick: data.limit=1000 trainer.max_epochs=1)"
    assert (out / "table.md").read_text().startswith(f"**{note}: ")
    assert "Hinton 2006 (Quick mode" in (out / "table.tex").read_text()
    page = (out / "table.html").read_text()
    assert "<title>Hinton 2006 (quick mode)</title>" in page and f"<p class='note'>{note}" in page
    assert {r["mode"] for r in read_csv(out / "table.csv")} == {"quick"}
    (experiment / "experiment.json").write_text(json.dumps({"experiment": "hinton2006", "mode": "full"}))
    report_main([str(multirun), "--out", str(out)])
    assert "Quick mode" not in (out / "table.md").read_text() and "mode" not in read_csv(out / "table.csv")[0]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)")
def test_training_curves_show_in_headless_chromium(with_curves, tmp_path):
    out = tmp_path / "r"
    report_main([str(with_curves), "--format", "html", "--out", str(out)])
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1400,1400",
                    (out / "table.html").resolve().as_uri()], capture_output=True, timeout=120, check=False)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # both groups' curves are on screen
        assert (np.abs(pixels - colour).sum(axis=1) < 40).sum() > 50, colour


def test_codes_panels_are_titled_with_the_knn_accuracy_of_their_codes():
    """Fig. 3's two panels are compared by the kNN accuracy of their 2-D codes, named in each title."""
    run = Run("ae2", {"callbacks": {"embedding_plot": {"knn_neighbors": 5}}}, {"test/knn_acc": 0.71234}, "finished")
    assert codes_panel_title(run, ("hinton2006_ae2",)) == "hinton2006_ae2\n5-NN accuracy 0.712"
    assert codes_panel_title(Run("pca2", {}, {}, "finished"), ("",)) == "pca2"  # no kNN logged: the name alone
