"""What every benchmark records beside its figures: machine, versions, commit."""

from __future__ import annotations

import json
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_description(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def environment(device: str) -> dict:
    import pytorch_lightning

    from latentbench.tracking import git_commit

    return {
        "device": device_description(device),
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def spread(values: list[float]) -> dict:
    """min / median / max of repeated measurements."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "all": values}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
