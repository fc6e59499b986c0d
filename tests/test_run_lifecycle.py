"""The run's life: status on disk, resume as the same run, signals, one writer, durable writes, moved runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import pytest
import torch

from latentbench.run_dir import RunDir, link_durably, write_durably
from tests.conftest import run_cli

# Digits AE, 2 epochs of 21 batches; a periodic last.ckpt every 5 steps.
RUN = ["model=ae", "trainer=cpu", "trainer.max_epochs=2", "deterministic=true", "logger=none",
       "callbacks.periodic_checkpoint.every_n_steps=5", "callbacks.embedding_plot.methods=[pca]"]
COMPARED = ("test/recon_sse", "test/mse", "best_val/loss", "global_step", "epochs")


def train_into(run_dir, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("train", *RUN, *extra, f"hydra.run.dir={run_dir}", env=env)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (read-only for the tests: copy it to change it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = train_into(run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def copy_of(run_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    return target


def snapshot(run_dir) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_finished_run_records_its_status_and_relative_paths(finished):
    run = RunDir(finished)
    metrics, info = run.metrics(), run.info()
    assert metrics["status"] == info["status"] == "finished"
    assert metrics["checkpoint"] == "checkpoints/best-epoch=001.ckpt"
    assert info["pid"] and info["host"] == socket.gethostname()
    assert not run.lock_file.exists() and not run.reserve_file.exists()


@pytest.mark.parametrize("override", ["model.latent_dim=8", "model.optimizer.lr=0.1", "seed=7", "data.batch_size=32",
                                      "+model.foo=1", "trainer.max_epochs=1"])
def test_resume_refuses_overrides_that_change_the_run_and_changes_nothing(finished, tmp_path, override):
    run_dir = copy_of(finished, tmp_path)
    before = snapshot(run_dir)
    result = run_cli("train", f"resume={run_dir}", override)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: resume: {override}"), last
    assert "Traceback" not in result.stderr
    assert snapshot(run_dir) == before  # metrics.json, run.json, the recorded config: untouched


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished, tmp_path):
    run_dir = copy_of(finished, tmp_path)
    before = snapshot(run_dir)
    result = run_cli("train", f"resume={run_dir}", "logger=none")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resume: {run_dir} has finished (2 epochs, test/" in result.stderr
    assert "nothing to do" in result.stderr
    assert snapshot(run_dir) == before


def test_a_resume_with_more_epochs_extends_a_finished_run(finished, tmp_path):
    # moved as well: the copy resumes from its own files; into a folder named as a multirun job's
    # (its '=' and ',' would make a sweep of an unquoted override), given as the run prints it
    run_dir = copy_of(finished, tmp_path / "3_model.latent_dim=8,seed=2")
    result = run_cli("train", f"resume={run_dir}", "trainer.max_epochs=3")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = RunDir(run_dir).metrics()
    assert (metrics["status"], metrics["epochs"], metrics["global_step"]) == ("finished", 3, 63)
    recorded = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert recorded.count("trainer.max_epochs") == 1 and "trainer.max_epochs=3" in recorded  # applied, and recorded once
    assert (run_dir / metrics["checkpoint"]).is_file()


def test_a_new_run_into_a_finished_runs_directory_is_refused(finished, tmp_path):
    run_dir = copy_of(finished, tmp_path / "2_seed=1,lr=0.1")  # a multirun job's name: the command line quotes it
    before = snapshot(run_dir)
    result = train_into(run_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: hydra.run.dir: {run_dir} holds a finished run; a new run there would replace its results "
        f"(continue it with resume={run_dir}, or pick another directory)")
    assert snapshot(run_dir) == before


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = train_into(run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    return RunDir(run_dir).metrics()


@pytest.mark.parametrize(("signum", "code", "hook"), [
    ("SIGTERM", 143, "train_batch_end"), ("SIGINT", 130, "validation_batch_end"),
    # SIGUSR1 also runs in test_a_requeued_slurm_job_continues_its_own_run
    pytest.param("SIGUSR1", 138, "train_batch_end", marks=pytest.mark.slow),
    pytest.param("SIGINT", 130, "train_batch_end", marks=pytest.mark.slow),
    pytest.param("SIGTERM", 143, "validation_batch_end", marks=pytest.mark.slow)])
def test_a_signal_saves_last_ckpt_marks_the_run_interrupted_and_resumes_exactly(uninterrupted, tmp_path, signum, code, hook):
    run_dir = tmp_path / "run"
    n = 8 if hook == "train_batch_end" else 2  # step 8 (last save at 5), or the 2nd validation batch of epoch 0
    result = train_into(run_dir, "+callbacks.signal._target_=tests.helpers.SignalAtHook", f"+callbacks.signal.hook={hook}",
                        f"+callbacks.signal.n={n}", f"+callbacks.signal.signum={signum}", "+callbacks.signal.epoch=0")
    assert result.returncode == code, result.stderr[-2000:]
    assert f"interrupted by {signum}: saved {run_dir}/checkpoints/last.ckpt; continue with:" in result.stderr
    assert result.stderr.strip().splitlines()[-1].strip() == f"latentbench train resume={run_dir}"
    run = RunDir(run_dir)
    assert run.info()["status"] == "interrupted" and run.status() == "interrupted"
    assert not run.metrics_file.exists() and not run.lock_file.exists()
    saved_step = torch.load(run.last_checkpoint, weights_only=True)["global_step"]
    assert saved_step == (8 if hook == "train_batch_end" else 20)  # the step it was at, or the last save before validation
    resumed = run_cli("train", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = run.metrics()
    assert {k: metrics[k] for k in COMPARED} == {k: uninterrupted[k] for k in COMPARED}


def test_sigterm_without_save_on_interrupt_keeps_the_last_save_and_still_resumes_exactly(uninterrupted, tmp_path):
    """With callbacks.save_on_interrupt=null Lightning stops by itself on SIGTERM: the run is still
    marked interrupted (not left running), keeps its last periodic save, and resumes to the same result."""
    run_dir = tmp_path / "run"
    result = train_into(run_dir, "callbacks.save_on_interrupt=null", "+callbacks.signal._target_=tests.helpers.SignalAtHook",
                        "+callbacks.signal.hook=train_batch_end", "+callbacks.signal.n=8", "+callbacks.signal.signum=SIGTERM",
                        "+callbacks.signal.epoch=0")
    assert result.returncode == 143, result.stderr[-2000:]
    assert f"interrupted by SIGTERM: kept {run_dir}/checkpoints/last.ckpt; continue with:" in result.stderr
    run = RunDir(run_dir)
    assert run.status() == "interrupted" and not run.lock_file.exists()
    assert torch.load(run.last_checkpoint, weights_only=True)["global_step"] == 5  # the periodic save before step 8
    assert run_cli("train", f"resume={run_dir}").returncode == 0
    assert {k: run.metrics()[k] for k in COMPARED} == {k: uninterrupted[k] for k in COMPARED}


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    result = train_into(run_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {run_dir} is in use by process {os.getpid()} on {socket.gethostname()} since now "
        f"(one writer per run; if that process is gone, delete {run_dir}/.lock)")
    assert not (run_dir / ".hydra").exists()  # refused before anything was written
    dead = subprocess.run(["true"]).args and subprocess.Popen(["true"])
    dead.wait()
    (run_dir / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    result = train_into(run_dir, "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert RunDir(run_dir).status() == "finished" and not (run_dir / ".lock").exists()


def test_checkpoints_do_not_go_through_the_system_temp_dir(tmp_path):
    """Lightning stages checkpoints in the temp dir and moves them (a copy across filesystems);
    ours are written beside their final place: a missing TMPDIR does not matter."""
    run_dir = tmp_path / "run"
    result = train_into(run_dir, "trainer.max_epochs=1", env={"TMPDIR": str(tmp_path / "no-such-dir")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 21
    assert not list(run_dir.rglob(".*.tmp-*"))


def test_an_epoch_ends_last_ckpt_is_a_link_to_the_checkpoint_saved_at_that_step(finished, tmp_path):
    """At an epoch end Lightning writes the best checkpoint and then last.ckpt, the same state:
    written once, linked once; a later save of either name (a rename) leaves the other's bytes."""
    checkpoints = finished / "checkpoints"
    best, last = checkpoints / "best-epoch=001.ckpt", checkpoints / "last.ckpt"
    assert os.path.samefile(best, last)
    assert torch.load(last, weights_only=True)["global_step"] == 42
    assert not list(checkpoints.glob(".*.link-*"))
    source, linked = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    source.write_bytes(b"best")
    assert link_durably(source, linked) and os.path.samefile(source, linked)
    write_durably(linked, b"newer")
    assert source.read_bytes() == b"best" and linked.read_bytes() == b"newer"
    assert not link_durably(tmp_path / "missing.ckpt", linked) and linked.read_bytes() == b"newer"


# digits AE, epochs of 4 steps (one group of fused steps), 2 validation and test batches
FOUR_STEP_EPOCHS = ["model=ae", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                    "callbacks.embedding_plot=null"]


@pytest.fixture
def saves(monkeypatch) -> list[tuple[str, int]]:
    """``(file name, global step)`` of every checkpoint serialized in this process, in order."""
    from latentbench.checkpoints import DurableCheckpointIO

    written, save = [], DurableCheckpointIO.save_checkpoint

    def noted(self, checkpoint, path, storage_options=None):
        written.append((os.path.basename(path), checkpoint["global_step"]))
        return save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(DurableCheckpointIO, "save_checkpoint", noted)
    return written


def test_last_ckpt_is_written_at_every_epoch_end_not_only_at_a_new_best(cfg_factory, tmp_path, saves):
    """A validation that does not improve writes no top-k checkpoint: last.ckpt must still move on,
    or a finished run would be extended (``resume=... trainer.max_epochs=<more>``) from its best epoch."""
    from latentbench.train import train

    # mode=max on a falling loss: the best stays at epoch 0
    metrics = train(cfg_factory(*FOUR_STEP_EPOCHS, "trainer.max_epochs=2", "callbacks.model_checkpoint.mode=max",
                                "callbacks.best_val_metrics.mode=max"))
    checkpoints = tmp_path / "checkpoints"
    assert os.path.basename(metrics["checkpoint"]) == "best-epoch=000.ckpt"
    # epoch 0: the best, and last.ckpt linked to it (not serialized again); epoch 1: last.ckpt alone
    assert saves == [("best-epoch=000.ckpt", 4), ("last.ckpt", 8)]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 8


def test_a_run_without_validation_writes_last_ckpt_at_its_end_not_at_every_epoch(cfg_factory, saves):
    from latentbench.train import train

    train(cfg_factory(*FOUR_STEP_EPOCHS, "trainer.max_epochs=3", "trainer.limit_val_batches=0"))
    assert saves == [("last.ckpt", 12)]


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only: skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_in_one_line_and_keeps_the_last_good_checkpoint(small_disk):
    run_dir = small_disk / "run"
    result = train_into(run_dir, "+callbacks.fill._target_=tests.helpers.FillDiskAtStep", "+callbacks.fill.step=7")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: cannot write {run_dir}/checkpoints/last.ckpt: No space left on device"
    metrics = RunDir(run_dir).metrics()
    assert metrics["status"] == "failed" and "No space left on device" in metrics["error"]
    assert metrics["checkpoint"] == "checkpoints/last.ckpt"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert not list(run_dir.rglob(".*.tmp-*"))


def job_dir(sweep, number: int):
    """Job ``number``'s folder of a multirun (``<number>_<swept overrides>``), or where it would be."""
    found = sorted(sweep.glob(f"{number}_*"))
    return found[0] if found else sweep / f"{number}_not-started"


def test_an_interrupted_multirun_resumes_only_the_jobs_not_finished(tmp_path):
    sweep = tmp_path / "sweep"
    # job 0 finishes, job 1 gets SIGTERM at step 8 (the multirun stops there), job 2 never starts
    jobs = ["-m", *RUN, "+callbacks.signal._target_=tests.helpers.SignalAtHook", "+callbacks.signal.hook=train_batch_end",
            "+callbacks.signal.signum=SIGTERM", "+callbacks.signal.n=1000,8,1000", f"hydra.sweep.dir={sweep}"]
    result = run_cli("train", *jobs)
    assert result.returncode == 143, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].strip() == f"latentbench train -m resume={sweep}"
    assert [RunDir(job_dir(sweep, n)).status() for n in range(3)] == ["finished", "interrupted", None]
    assert job_dir(sweep, 1).name == "1_+callbacks.signal.n=8"  # named by the swept override
    first = (job_dir(sweep, 0) / "metrics.json").read_bytes()
    resumed = run_cli("train", "-m", f"resume={sweep}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (job_dir(sweep, 0) / "metrics.json").read_bytes() == first  # skipped, not retrained
    metrics = [RunDir(job_dir(sweep, n)).metrics() for n in range(3)]
    assert [m["status"] for m in metrics] == ["finished"] * 3
    # the signal callback does not change training: all three jobs equal job 0, the interrupted one included
    assert {k: metrics[1][k] for k in COMPARED} == {k: metrics[0][k] for k in COMPARED} == {k: metrics[2][k] for k in COMPARED}


def test_a_requeued_slurm_job_continues_its_own_run(uninterrupted, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    scontrol.chmod(0o755)
    env = {"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = ["train", *RUN, f"paths.log_dir={tmp_path / 'outputs'}", "run_name=slurm_job",
               "+callbacks.signal._target_=tests.helpers.SignalAtHook", "+callbacks.signal.hook=train_batch_end",
               "+callbacks.signal.n=8", "+callbacks.signal.signum=SIGUSR1"]
    first = run_cli(*command, env=env)
    assert first.returncode == 138, first.stderr[-2000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "SLURM: requeued job 4242" in first.stderr
    again = run_cli(*command, env={**env, "SLURM_RESTART_COUNT": "1"})  # what SLURM runs after the requeue
    assert again.returncode == 0, again.stderr[-2000:]
    run_dir = tmp_path / "outputs" / "slurm_job"
    assert f"SLURM job 4242 restarted (restart 1): continuing its run {run_dir}" in again.stderr
    metrics = RunDir(run_dir).metrics()
    assert {k: metrics[k] for k in COMPARED} == {k: uninterrupted[k] for k in COMPARED}
