"""W&B artifacts: a finished run logs its checkpoint (type model) and its results (type results)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

from latentbench.train import train


def offline_records(path: Path):
    """The protobuf records of an offline run's ``run-<id>.wandb`` file (a LevelDB-style log of 32 KiB blocks)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full record
            pending = b""
            yield_chunk = chunk
        elif kind == 2:  # first, middle, last fragments
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        elif kind == 4:
            yield_chunk = pending + chunk
        else:
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(yield_chunk)
        yield record


def finished_records(path: Path, timeout: float = 60) -> list:
    """The records once W&B's service has written the run's exit record (it writes asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(offline_records(path)) if path.stat().st_size > 7 else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def test_offline_run_logs_checkpoint_and_results_artifacts(cfg_factory, tmp_path):
    metrics = train(cfg_factory("model=pca", "model.n_components=8", "logger=wandb", "data.limit=200"))
    records = finished_records(next(Path(metrics["wandb_dir"]).glob("run-*.wandb")))
    artifacts = {r.artifact.type: r.artifact for r in records if r.WhichOneof("record_type") == "artifact"}
    assert {"model", "results"} <= set(artifacts)  # (and the run_table of the embedding table)
    model = artifacts["model"]
    assert model.name == f"model-{metrics['wandb_run_id']}" and "best" in model.aliases
    assert [entry.path for entry in model.manifest.contents] == [Path(metrics["checkpoint"]).name]
    assert json.loads(model.metadata)["test/recon_sse"] == metrics["test/recon_sse"]
    results = artifacts["results"]
    assert results.name == f"results-{metrics['wandb_run_id']}"
    assert {"metrics.json", "metrics.table.json", "tables/test_embedding_table.csv"} - {e.path for e in results.manifest.contents} <= {
        "tables/test_embedding_table.csv"}  # with W&B on, tables go to W&B rather than tables/*.csv
    assert {"metrics.json", "metrics.table.json"} <= {e.path for e in results.manifest.contents}
