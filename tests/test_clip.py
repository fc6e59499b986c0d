"""CLIP pre-training, CLIP score and zero-shot classification, all offline with a CLIP trained here."""

from __future__ import annotations

import json

import open_clip
import pytest
import pytorch_lightning as pl
import torch

from latentbench.checkpoints import ModelClassInCheckpoint
from latentbench.data.shapes import COLOURS, SHAPES, SIZES, ShapesDataModule
from latentbench.errors import ConfigError
from latentbench.evaluation.clip_score import CLIPScore, zero_shot_accuracy
from latentbench.evaluation.fid import make_fid
from latentbench.models.clip import CLIPModel
from latentbench.models.clip_inference import image_features, load_clip, text_features
from latentbench.train import train
from tests.conftest import SHARED_DATA

COCO = SHARED_DATA / "coco-mini"
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": None, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# zero-shot prompts for background-colour classes (what a briefly trained CLIP learns first: the
# colour of most pixels): the class in caption-like phrases over every size, shape colour and shape,
# averaged (prompt ensembling); the shapes module offers the same ones
BACKGROUND_TEMPLATES = [f"a {size} {colour} {shape} on a {{}} background" for size in SIZES for colour in COLOURS for shape in SHAPES]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CLIP trained for 40 steps on 32x32 shapes (labels = background colour), its
    Lightning checkpoint and the held-out data."""
    pl.seed_everything(0)
    data = ShapesDataModule(num_train=640, num_val=64, num_test=256, image_size=32, batch_size=32, label_by="background")
    model = CLIPModel(model_cfg=TINY, input_shape=[3, 32, 32], has_captions=True,
                      optimizer={"_target_": "torch.optim.AdamW", "lr": 3e-3, "weight_decay": 0.0})
    trainer = pl.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[ModelClassInCheckpoint()],
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    checkpoint = tmp_path_factory.mktemp("clip") / "clip.ckpt"
    trainer.save_checkpoint(checkpoint)
    test = data.splits["test"][list(range(256))]
    return {"model": model.eval(), "checkpoint": checkpoint, "images": test["image"], "labels": test["label"],
            "captions": test["caption"], "class_names": data.class_names, "trainer": trainer, "data": data}


def test_clip_score_matching_beats_shuffled(trained):
    score = CLIPScore(checkpoint=str(trained["checkpoint"]))
    images, captions = trained["images"], trained["captions"]
    score.update(images, captions)
    matching = float(score.compute())
    score.reset()
    score.update(images, captions[1:] + captions[:1])  # every image with another image's caption
    shuffled = float(score.compute())
    assert 0.0 <= shuffled < matching <= 100.0
    assert matching - shuffled > 10.0, (matching, shuffled)
    assert score.key("val") == "val/clip_score_local"
    assert not any(k.startswith("clip") for k in score.state_dict())  # holders of the metric do not save CLIP weights
    # the definition: 100 * max(cos, 0), averaged
    model, tokenizer = load_clip(str(trained["checkpoint"]))
    with torch.no_grad():
        cos = (image_features(model, images[:8]) * text_features(model, tokenizer, captions[:8])).sum(1)
    direct = CLIPScore(model=model, tokenizer=tokenizer, name="mine")
    direct.update(images[:8], captions[:8])
    assert float(direct.compute()) == pytest.approx(float(100 * cos.clamp(min=0).mean()), rel=1e-5)


def test_zero_shot_above_chance(trained):
    model, tokenizer = load_clip(str(trained["checkpoint"]))
    accuracy = zero_shot_accuracy(model, tokenizer, trained["images"], trained["labels"], trained["class_names"],
                                  BACKGROUND_TEMPLATES)
    chance = 1 / len(trained["class_names"])
    assert trained["data"].zero_shot_templates == BACKGROUND_TEMPLATES  # what the module used (templates: null)
    assert accuracy > 2 * chance, accuracy
    # the module logs the same number at test time
    results = trained["trainer"].test(trained["model"], datamodule=trained["data"], verbose=False)[0]
    assert results["test/zero_shot_acc"] == pytest.approx(accuracy, abs=1e-6)
    assert results["test/retrieval_i2t_top1"] > 1 / 32


def test_checkpoint_round_trips(trained):
    state = torch.load(trained["checkpoint"], map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["model_cfg"]["vision_cfg"]["image_size"] == 32  # filled in from the data
    assert all(k.startswith(("model.", "metrics.")) for k in state["state_dict"])
    model, tokenizer = load_clip(str(trained["checkpoint"]))
    assert isinstance(model, open_clip.CLIP) and not model.training
    original = trained["model"].model
    images, captions = trained["images"][:16], trained["captions"][:16]
    with torch.no_grad():
        assert torch.allclose(image_features(model, images), image_features(original, images), atol=1e-6)
        assert torch.allclose(text_features(model, tokenizer, captions), text_features(original, trained["model"].tokenizer, captions), atol=1e-6)
    # also without Hydra, as a Lightning module
    reloaded = CLIPModel.load_from_checkpoint(trained["checkpoint"], map_location="cpu")
    assert reloaded.hparams.model_cfg == state["hyper_parameters"]["model_cfg"]


def test_bad_checkpoints_are_one_line(trained, tmp_path):
    def message(path) -> str:
        with pytest.raises(ConfigError) as error:
            load_clip(str(path))
        text = str(error.value)
        assert "\n" not in text and str(path) in text
        return text

    assert "not found" in message(tmp_path / "missing.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained["checkpoint"].read_bytes()[:5000])
    assert "truncated or corrupt" in message(truncated)
    other = tmp_path / "ae.ckpt"
    torch.save({"state_dict": {"encoder.0.weight": torch.zeros(2, 2)}, "hyper_parameters": {"input_shape": [1, 8, 8]}}, other)
    assert "not a checkpoint of a `clip` run" in message(other)
    with pytest.raises(ConfigError, match="load_clip: give a checkpoint"):
        load_clip()


def test_open_clip_architecture_path_offline(tmp_path):
    """The online path (open_clip architecture + pretrained weights) with a local weights file for a
    registered architecture, and a pretrained tag that cannot be downloaded offline."""
    config = tmp_path / "latentbench-tiny-test.json"
    config.write_text(json.dumps({**TINY, "vision_cfg": {**TINY["vision_cfg"], "image_size": 32}}))
    open_clip.add_model_config(config)
    source = open_clip.create_model("latentbench-tiny-test")
    weights = tmp_path / "weights.pt"
    torch.save(source.state_dict(), weights)
    model, tokenizer = load_clip(model_name="latentbench-tiny-test", pretrained=str(weights))
    captions = ["a large red circle on a blue background, top left", "a small green cross on a white background, centre"]
    with torch.no_grad():
        assert torch.allclose(text_features(model, tokenizer, captions), text_features(source.eval(), tokenizer, captions), atol=1e-6)
    assert CLIPScore(model_name="latentbench-tiny-test", pretrained=str(weights)).key("test") == "test/clip_score_latentbench-tiny-test"
    with pytest.raises(ConfigError) as error:
        load_clip(model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert "\n" not in str(error.value) and "ViT-B-32" in str(error.value)


def test_clip_config_errors(cfg_factory):
    from latentbench.train import build_run

    with pytest.raises(ConfigError, match="model.has_captions: model=clip needs image-text data"):
        build_run(cfg_factory("model=clip", "data=digits"))
    with pytest.raises(ConfigError, match="model.model_cfg and model_name: give one"):
        build_run(cfg_factory("model=clip", "data=shapes", "model.model_name=ViT-B-32"))


@pytest.mark.skipif(not (COCO / "train-00000.tar").is_file(), reason=f"coco-mini not found at {COCO}")
def test_train_clip_on_coco_mini_from_config(cfg_factory):
    cfg = cfg_factory("model=clip", "data=laion", f"data.root={COCO}", "data.resolution=32", "data.batch_size=16",
                      "data.limit=32", "trainer.max_steps=2", "model.model_cfg.text_cfg.layers=1")
    metrics = train(cfg)
    assert metrics["status"] == "finished" and metrics["global_step"] == 2
    assert 0.0 <= metrics["test/retrieval_i2t_top1"] <= 1.0 and metrics["test/loss"] > 0
    model, _ = load_clip(metrics["checkpoint"])
    assert model.visual.image_size == (32, 32) or model.visual.image_size == 32


def test_clip_on_shapes_with_default_callbacks_logs_knn_accuracy_of_image_embeddings(cfg_factory):
    cfg = cfg_factory("model=clip", "data=shapes", "data.image_size=32", "data.num_train=256", "data.num_val=64",
                      "data.num_test=64", "data.batch_size=64", "trainer.max_steps=2", "model.model_cfg.text_cfg.layers=1")
    metrics = train(cfg)
    assert metrics["status"] == "finished"
    assert 0.0 <= metrics["test/knn_acc"] <= 1.0


def test_clip_image_embeddings_are_a_domain_fid_feature_space_for_colour(trained):
    """metrics.fid.checkpoint may name a model=clip run (colour images without labels, e.g. for the
    colorizers): greyed images lie far from real ones in its image embedding, two real halves close."""
    fid = make_fid("domain", checkpoint=str(trained["checkpoint"]))
    assert fid.image_shape == (3, 32, 32) and not fid.extractor.classifies
    images = trained["images"][:128]
    grey = images.mean(dim=1, keepdim=True).expand_as(images)
    fid.update(images[:64], images[64:])
    real_vs_real = fid.compute()["fid_domain"]
    fid.reset()
    fid.update(images[:64], grey[64:])
    assert fid.compute()["fid_domain"] > 3 * real_vs_real
