"""experiments/ldm_factor: curves of a logged metric against steps, and the quick experiment end to end."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from latentbench.curves import read_curve, write_curves
from latentbench.errors import ConfigError
from tests.conftest import MNIST_ROOT


def write_log(run, rows: list[dict]) -> None:
    folder = run / "csv" / "version_0"
    folder.mkdir(parents=True)
    with (folder / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "step", "train/loss", "val/sample_fid_domain"])
        writer.writeheader()
        writer.writerows(rows)


def test_curves_of_a_metric_against_steps(tmp_path):
    sweep = tmp_path / "ldm"
    write_log(sweep / "f1", [{"epoch": 0, "step": 3, "train/loss": 0.5}, {"epoch": 0, "step": 3, "val/sample_fid_domain": 40.0},
                             {"epoch": 1, "step": 7, "val/sample_fid_domain": 30.5}])
    write_log(sweep / "f4", [{"epoch": 0, "step": 3, "val/sample_fid_domain": 20.25}])
    (sweep / "f4" / "notes").mkdir()
    assert read_curve(sweep / "f1", "val/sample_fid_domain") == [(3, 40.0), (7, 30.5)]
    curves = write_curves(sweep, "val/sample_fid_domain", tmp_path / "report", "ldm", "a title")
    assert curves == {"f1": [(3, 40.0), (7, 30.5)], "f4": [(3, 20.25)]}
    rows = list(csv.reader((tmp_path / "report" / "ldm_curves.csv").open()))
    assert rows == [["run", "step", "val/sample_fid_domain"], ["f1", "3", "40.0"], ["f1", "7", "30.5"], ["f4", "3", "20.25"]]
    table = (tmp_path / "report" / "ldm_curves.md").read_text()
    assert "| step | f1 | f4 |" in table and "| 3 | 40.000 | 20.250 |" in table and "| 7 | 30.500 |  |" in table
    assert (tmp_path / "report" / "ldm_curves.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match=r"^curves: no run under .* logged val/other to CSV"):
        write_curves(sweep, "val/other", tmp_path / "report", "ldm")


@pytest.mark.slow
def test_quick_experiment_writes_fid_against_steps_per_factor(tmp_path):
    if not MNIST_ROOT.is_dir():
        pytest.skip("no MNIST")
    from latentbench.experiment import main

    assert main(["ldm_factor", "--quick", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "report" / "ldm_curves.csv").open()))
    assert {row["run"] for row in rows} == {"f1", "f4"}
    for factor in ("f1", "f4"):
        values = [float(row["val/sample_fid_domain"]) for row in rows if row["run"] == factor]
        assert len(values) == 3 and np.isfinite(values).all() and min(values) > 0  # one per LDM epoch
    assert "test/sample_fid_domain" in (tmp_path / "report" / "ldm.md").read_text()
