"""data.label_keywords: class labels from captions (coco-mini), and zero-shot accuracy of a clip run on them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentbench.data.image_text import LaionDataModule, keyword_label
from latentbench.errors import ConfigError
from latentbench.train import train
from tests.conftest import SHARED_DATA

COCO = SHARED_DATA / "coco-mini"
KEYWORDS = ["person", "dog", "cat", "pizza", "train", "bus", "giraffe", "elephant"]
needs_coco = pytest.mark.skipif(not (COCO / "val-00000.tar").is_file(), reason=f"coco-mini not found at {COCO}")


def test_keyword_label_rules():
    assert keyword_label("A dog is sitting on an unmade bed with pillows.", KEYWORDS) == 1
    assert keyword_label("Two giraffes at the zoo during the day.", KEYWORDS) == 6  # simple plural
    assert keyword_label("A cats sits on the table with a dog outside.", KEYWORDS) == 1  # keyword order decides
    assert keyword_label("A PIZZA with cheese", KEYWORDS) == 3  # case-insensitive
    assert keyword_label("a catalogue of hotdogs and a trainer", KEYWORDS) == -1  # whole words only
    assert keyword_label("A woman stands in the dining area at the table.", KEYWORDS) == -1


@needs_coco
def test_coco_mini_labels_from_captions():
    data = LaionDataModule(root=str(COCO), resolution=16, label_keywords=KEYWORDS, batch_size=8)
    data.setup()
    assert data.class_names == KEYWORDS and data.num_classes == 8
    val = data.splits["val"]
    labels = dict(zip(val.captions, val.labels.tolist()))
    assert labels["A dog is sitting on an unmade bed with pillows."] == 1
    assert labels["A pizza is prepared with cheese, tomato sauce, and broccoli."] == 3
    assert labels["a couple of trains are on the tracks"] == 4
    assert labels["A red extra long bus driving down a stone covered walkway."] == 5
    assert labels["A woman stands in the dining area at the table."] == -1
    assert (val.labels >= 0).sum() == sum(keyword_label(c, KEYWORDS) >= 0 for c in val.captions) > 10


def test_label_keywords_errors(cfg_factory):
    with pytest.raises(ConfigError, match=r"^data\.label_keywords: derives labels"):
        train(cfg_factory("model=clip", "data=laion", f"data.root={COCO}", "data.label_keywords=[dog]", "data.label_column=cls"))
    with pytest.raises(ConfigError, match=r"^data\.label_keywords: expected a non-empty list of words"):
        train(cfg_factory("model=clip", "data=laion", f"data.root={COCO}", "data.label_keywords=[]"))


@needs_coco
def test_clip_on_coco_mini_logs_zero_shot_accuracy(cfg_factory, tmp_path):
    cfg = cfg_factory("model=clip", "data=laion", f"data.root={COCO}", "data.resolution=32", "data.batch_size=16",
                      f"data.label_keywords=[{','.join(KEYWORDS)}]", "trainer.max_steps=2", "model.model_cfg.text_cfg.layers=1")
    metrics = train(cfg)
    written = json.loads((tmp_path / "metrics.json").read_text())
    accuracy = written["test/zero_shot_acc"]
    assert np.isfinite(accuracy) and 0.0 <= accuracy <= 1.0 and accuracy == pytest.approx(metrics["test/zero_shot_acc"])
