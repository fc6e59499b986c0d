"""``latentbench sweep``: one W&B sweep file, run locally through Hydra multirun when W&B is offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from latentbench.cli import main
from latentbench.overrides import quote_numeric_choices
from latentbench.compose import compose_run_config
from latentbench.overrides import hydra_value, safe_override
from latentbench.sweep import fixed_overrides, load_sweep, local_args
from tests.conftest import REPO, needs_mnist, run_cli
from tests.test_artifacts import finished_records

TINY = ["trainer=cpu", "logger=none", "trainer.max_epochs=1", "data.limit=200"]


def write_sweep(tmp_path: Path, **fields) -> Path:
    sweep = {"name": "t", "method": "grid", "metric": {"name": "test/recon_sse", "goal": "minimize"},
             "command": ["${env}", "latentbench", "train", "model=ae", "${args_no_hyphens}"], **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_offline_grid_runs_every_trial_and_lists_the_failed_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = write_sweep(tmp_path, parameters={"model.latent_dim": {"values": [8, 100]}})  # 100 > 64 pixels: refused
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "sweep t (grid, 2 trials)" in printed
    lines = {line.split()[0]: line for line in printed.splitlines() if line.strip()[:1].isdigit()}
    assert "finished" in lines["0"] and "model.latent_dim=8" in lines["0"]
    assert "failed" in lines["1"] and "model.latent_dim: 100 is larger than the input size 64" in lines["1"]
    finished = json.loads((out / "0_model.latent_dim=8" / "metrics.json").read_text())
    assert finished["status"] == "finished" and finished["test/recon_sse"] > 0
    assert f"{finished['test/recon_sse']:.6g}" in lines["0"]
    failed = json.loads((out / "1_model.latent_dim=100" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "larger than the input size" in failed["error"]
    config = yaml.safe_load((out / "0_model.latent_dim=8" / ".hydra" / "config.yaml").read_text())
    assert config["logger"]["wandb"]["group"] == "t"  # the sweep name is the W&B group of every trial
    assert "run_name=" not in printed  # trials are named by their folders (0_model.latent_dim=8), not by a run_name override


def test_offline_random_sweep_runs_optuna_with_the_sweep_metric(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    with_wandb = [o for o in TINY if o != "logger=none"]  # W&B offline: each trial must get its own run
    assert main(["sweep", str(REPO / "sweeps" / "ae_random.yaml"), "--count", "2", "--out", str(out), *with_wandb]) == 0
    runs = []
    jobs = sorted(out.glob("[0-9]_*"))  # 0_model.activation=...,model.latent_dim=...,model.optimizer.lr=...
    assert [job.name.split("_")[0] for job in jobs] == ["0", "1"] and all("model.optimizer.lr=" in job.name for job in jobs)
    for job in jobs:
        records = finished_records(next((job / "wandb").glob("offline-run-*/run-*.wandb")))
        runs.append(next(r.run for r in records if r.WhichOneof("record_type") == "run"))
    assert runs[0].run_id != runs[1].run_id
    assert [r.run_group for r in runs] == ["ae_random", "ae_random"]
    assert [r.display_name for r in runs] == [job.name for job in jobs]
    results = yaml.safe_load((out / "optimization_results.yaml").read_text())
    values = [json.loads((job / "metrics.json").read_text())["test/recon_sse"] for job in jobs]
    assert results["best_value"] == pytest.approx(min(values))
    assert set(results["best_params"]) == {"model.optimizer.lr", "model.latent_dim", "model.activation"}
    assert 1e-4 <= results["best_params"]["model.optimizer.lr"] <= 1e-2
    assert "sweep ae_random (random, 2 trials)" in capsys.readouterr().out


def test_bayes_and_random_map_to_optuna_samplers_and_goal(tmp_path):
    bayes = local_args(load_sweep(REPO / "sweeps" / "ae_hinton_bayes.yaml"), None, tmp_path, [])
    assert "hydra/sweeper/sampler=tpe" in bayes and "hydra.sweeper.direction=maximize" in bayes
    assert "optimized_metric=test/psnr" in bayes and "hydra.sweeper.n_trials=30" in bayes  # run_cap
    assert "data.batch_size=choice(64,128,256)" in bayes and "trainer.max_epochs=5" in bayes
    random = local_args(load_sweep(REPO / "sweeps" / "ae_random.yaml"), 7, tmp_path, ["trainer.max_epochs=1"])
    assert "hydra/sweeper/sampler=random" in random and "hydra.sweeper.n_trials=7" in random
    assert "model.optimizer.lr=tag(log,interval(0.0001,0.01))" in random and "model.latent_dim=int(interval(2,32))" in random
    assert "trainer.max_epochs=10" not in random  # an extra override pins that parameter
    grid = local_args(load_sweep(REPO / "sweeps" / "ae_grid.yaml"), None, tmp_path, [])
    assert "model.latent_dim=4,8,16" in grid and "seed=1,2,3" in grid and "hydra/sweeper=optuna" not in grid
    assert "hydra/launcher=parallel" not in grid and "hydra.sweeper.n_jobs=1" in bayes
    # --jobs N: N trials at once through the parallel launcher, Optuna proposing N at a time
    parallel = local_args(load_sweep(REPO / "sweeps" / "ae_random.yaml"), 8, tmp_path, [], jobs=2)
    assert "hydra/launcher=parallel" in parallel and "hydra.launcher.n_jobs=2" in parallel and "hydra.sweeper.n_jobs=2" in parallel


def agent_argv(sweep_file: Path, values: dict) -> list[str]:
    """The argv a W&B agent starts for one trial, built by wandb's own functions, as in wandb_agent.py."""
    sweep = yaml.safe_load(sweep_file.read_text())
    variables = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    variables["env"] = ["/usr/bin/env"]
    argv = []
    for chunk in create_sweep_command([str(c) for c in sweep["command"]]):
        argv += variables.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return argv


def test_wandb_agent_command_gives_overrides_hydra_accepts(tmp_path, monkeypatch):
    argv = agent_argv(REPO / "sweeps" / "ae_grid.yaml", {
        "model.latent_dim": 8, "model.optimizer.lr": 0.003, "seed": 2,
        "logger.wandb.project": "latent bench, take 2",  # a space and a comma: Hydra would read a sweep
        "model.scheduler": None,  # W&B writes None
        "model.hidden": [32, 16],
    })
    assert argv[:3] == ["/usr/bin/env", "latentbench", "train"]
    assert "logger.wandb.project=latent bench, take 2" in argv and "model.scheduler=None" in argv
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    overrides = quote_numeric_choices([safe_override(a) for a in argv[3:]])
    cfg = compose_run_config(overrides, tmp_path)
    assert cfg.model.latent_dim == 8 and cfg.model.optimizer.lr == 0.003 and cfg.seed == 2
    assert cfg.logger.wandb.project == "latent bench, take 2"
    assert cfg.model.scheduler is None and list(cfg.model.hidden) == [32, 16]
    assert cfg.logger.wandb.group == "ae_grid" and cfg.run_name == "ae_grid_abc123"


@pytest.mark.parametrize("arg, expected", [
    ("a=x,y", "a='x,y'"), ("a=None", "a=null"), ("a=it's", "a='it\\'s'"), ("a=x y", "a='x y'"),
    ("a=[1, 2]", "a=[1, 2]"), ("a.b=0.001", "a.b=0.001"), ("model=pca", "model=pca"), ("-m", "-m"), ("+x=1", "+x=1"),
])
def test_safe_override(arg, expected):
    assert safe_override(arg) == expected


@pytest.mark.parametrize("fields, message", [
    ({"method": "hyperband"}, "method 'hyperband' (allowed: grid, random, bayes)"),
    ({"command": ["${env}", "latentbench", "train", "${args}"]}, "command must end with ${args_no_hyphens}"),
    ({"method": "random", "metric": None}, "needs metric"),
    ({"parameters": {"model.latent_dim": {"min": 2, "max": 8}}}, "a grid sweep needs 'values'"),
])
def test_bad_sweep_file_is_one_line(tmp_path, capsys, monkeypatch, fields, message):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = write_sweep(tmp_path, **{"parameters": {"seed": {"values": [1]}}, **fields})
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1], err


def test_hparams_search_configs_compose(capsys):
    assert main(["train", "hparams_search=optuna", "--cfg", "hydra"]) == 0
    hydra_cfg = yaml.safe_load(capsys.readouterr().out)["hydra"]
    assert hydra_cfg["mode"] == "MULTIRUN"
    assert hydra_cfg["sweeper"]["_target_"].endswith("OptunaSweeper")
    assert hydra_cfg["sweeper"]["params"]["model.optimizer.lr"] == "tag(log, interval(0.0001, 0.01))"
    assert main(["train", "hparams_search=basic", "--cfg", "hydra"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["hydra"]["sweeper"]["params"]["seed"] == "1,2,3"


def test_slurm_launcher_and_trainer_agree(capsys):
    args = ["hydra/launcher=slurm", "trainer=slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.nodes=2", "hydra.launcher.partition=gpu"]
    assert main(["train", *args, "--cfg", "hydra"]) == 0
    launcher = yaml.safe_load(capsys.readouterr().out)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "gpu"
    assert launcher["tasks_per_node"] == "${.gpus_per_node}" and launcher["nodes"] == 2
    assert main(["train", *args, "--cfg", "job", "--resolve"]) == 0
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["devices"] == 4 and trainer["num_nodes"] == 2 and trainer["strategy"] == "ddp"


@pytest.mark.slow
def test_two_trials_through_the_submitit_local_launcher(tmp_path):
    """The cluster path without a cluster: submitit's local executor runs each job as a subprocess."""
    result = run_cli("train", "-m", "hydra/launcher=local", "model=pca", "model.n_components=4,8", *TINY, f"hydra.sweep.dir={tmp_path}", fresh=True)
    assert result.returncode == 0, result.stderr[-2000:]
    sse = {n: json.loads((tmp_path / f"{n}_model.n_components={k}" / "metrics.json").read_text())["test/recon_sse"] for n, k in ((0, 4), (1, 8))}
    assert sse[1] < sse[0]  # 8 components reconstruct better than 4
    assert (tmp_path / ".submitit").is_dir() and (tmp_path / "0_model.n_components=4" / ".hydra" / "config.yaml").is_file()


GRID_SWEEPS = sorted(path.name for path in (REPO / "sweeps").glob("*.yaml") if yaml.safe_load(path.read_text())["method"] == "grid")


@needs_mnist
@pytest.mark.parametrize("name", GRID_SWEEPS)
def test_every_value_of_a_grid_sweep_builds_its_run(name, tmp_path, monkeypatch):
    """Each value of each swept key (the others at their first value) composes with the sweep's command
    and builds data module, model and trainer: a typo in a sweep file fails here, not in trial 7."""
    from latentbench.train import build_run

    monkeypatch.setenv("WANDB_MODE", "disabled")
    sweep = load_sweep(REPO / "sweeps" / name)
    first = {key: spec["values"][0] for key, spec in sweep["parameters"].items()}
    for key, spec in sweep["parameters"].items():
        for value in spec["values"]:
            trial = {**first, key: value}
            overrides = [*fixed_overrides(sweep), *(f"{k}={hydra_value(v)}" for k, v in trial.items())]
            cfg = compose_run_config(overrides, tmp_path)
            assert OmegaConf.select(cfg, key) == value
            build_run(cfg)


@pytest.mark.slow  # 40-150 s: each worker process imports torch and Lightning
def test_a_parallel_multirun_runs_trials_in_worker_processes_each_its_own_run(tmp_path):
    """hydra/launcher=parallel: trials at once in worker processes, each with its own folder, seed and
    W&B run; a trial that fails is listed and makes the exit code non-zero, the others finish."""
    result = run_cli("train", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "model=ae", "trainer=cpu",
                     "trainer.max_epochs=1", "data.limit=200", "logger=wandb", "callbacks.embedding_plot.methods=[pca]",
                     "model.latent_dim=8,0,16", f"hydra.sweep.dir={tmp_path}", env={"WANDB_MODE": "offline"})
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"multirun {tmp_path}: 2 of 3 jobs finished" in result.stdout
    jobs = {d.name: d for d in tmp_path.iterdir() if d.is_dir() and not d.name.startswith(".")}
    assert sorted(jobs) == ["0_model.latent_dim=8", "1_model.latent_dim=0", "2_model.latent_dim=16"]
    info = {name: json.loads((d / "run.json").read_text()) for name, d in jobs.items()}
    assert info["1_model.latent_dim=0"]["status"] == "failed"
    finished = [json.loads((jobs[n] / "metrics.json").read_text()) for n in ("0_model.latent_dim=8", "2_model.latent_dim=16")]
    assert all(m["status"] == "finished" for m in finished)
    assert finished[0]["wandb_run_id"] != finished[1]["wandb_run_id"]
    assert info["0_model.latent_dim=8"]["pid"] != info["2_model.latent_dim=16"]["pid"]  # two worker processes


@pytest.mark.parametrize(("n_jobs", "cores", "threads"), [(2, 2, 1), (4, 16, 4), (3, 2, 1), (-1, 8, 1), (1, 8, None)])
def test_trials_at_once_split_the_cores(monkeypatch, n_jobs, cores, threads):
    import torch

    from latentbench.launch import share_cores_between_trials

    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    share_cores_between_trials(OmegaConf.create({"n_jobs": n_jobs}))
    assert set_to == ([threads] if threads else [])
