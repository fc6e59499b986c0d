"""metrics.clip_score: CLIP score of a text-conditioned LDM's samples vs their prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

from latentbench.errors import ConfigError
from latentbench.train import train
from tests.conftest import FAST, make_cfg
from tests.test_ldm import SHAPES, TINY_CLIP, TINY_LDM


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> str:
    """A tiny CLIP (2 steps) on 16x16 shapes: the text tower of the LDM and the CLIP-score model."""
    output = tmp_path_factory.mktemp("clip")
    train(make_cfg([*FAST, "model=clip", *SHAPES, f"model.model_cfg={TINY_CLIP}", "trainer.max_steps=2", "~callbacks.embedding_plot"], output))
    GlobalHydra.instance().clear()
    return str(output)


def text_ldm(clip_run: str) -> list[str]:
    return [*TINY_LDM, *SHAPES, "model.conditioning=text", f"model.text_encoder.checkpoint={clip_run}", "model.sampling.steps=2"]


def test_text_ldm_logs_sample_clip_score(cfg_factory, tmp_path, clip_run):
    metrics = train(cfg_factory(*text_ldm(clip_run), f"metrics.clip_score.checkpoint={clip_run}", "metrics.clip_score.num_prompts=6",
                                "metrics.clip_score.batch_size=4"))
    score = metrics["test/clip_score_local"]
    assert np.isfinite(score) and 0.0 <= score <= 100.0
    assert json.loads((tmp_path / "metrics.json").read_text())["test/clip_score_local"] == pytest.approx(score)
    # sampling every epoch: also logged at validation (metrics.json keeps the values at the best val/loss)
    assert 0.0 <= metrics["best_val/clip_score_local"] <= 100.0


def error_of(cfg_factory, *overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        train(cfg_factory(*overrides))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_clip_score_config_errors(cfg_factory, tmp_path, clip_run):
    assert error_of(cfg_factory, *TINY_LDM, f"metrics.clip_score.checkpoint={clip_run}").startswith(
        "metrics.clip_score: scores samples against their prompts, so it needs a text-conditioned model")
    ldm = text_ldm(clip_run)
    assert error_of(cfg_factory, *ldm, "metrics.clip_score.checkpoint=/nonexistent/clip.ckpt") == (
        "metrics.clip_score.checkpoint: checkpoint /nonexistent/clip.ckpt does not exist")
    assert error_of(cfg_factory, *ldm, "metrics.clip_score.enabled=true").startswith("metrics.clip_score.checkpoint: required when enabled")
    assert error_of(cfg_factory, *ldm, f"metrics.clip_score.checkpoint={clip_run}", "metrics.clip_score.num_prompts=0") == (
        "metrics.clip_score.num_prompts: expected a positive integer, got 0")
    good = Path(clip_run) / "checkpoints" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "is not a readable checkpoint" in error_of(cfg_factory, *ldm, f"metrics.clip_score.checkpoint={truncated}")
