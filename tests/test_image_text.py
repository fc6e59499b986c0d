"""Image-text data: procedural shapes (captions checked against pixels) and LAION-style shards (coco-mini)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from latentbench.data.image_text import LaionDataModule
from latentbench.data.shapes import COLOURS, POSITIONS, SHAPES, ShapesDataModule, generate_shapes
from latentbench.errors import ConfigError
from latentbench.instantiate import build
from tests.conftest import SHARED_DATA

COCO = SHARED_DATA / "coco-mini"
needs_coco = pytest.mark.skipif(not (COCO / "train-00000.tar").is_file(), reason=f"coco-mini not found at {COCO}")


def parse(caption: str) -> dict[str, str]:
    """"a large red circle on a blue background, top left" -> its parts."""
    words, position = caption.split(", ")
    _, size, colour, shape, _, _, background, _ = words.split(" ")
    return {"size": size, "colour": colour, "shape": shape, "background": background, "position": position}


def test_shapes_captions_match_pixels():
    size = 48
    data = generate_shapes(300, size, seed=7)
    for image, label, caption, (x, y) in zip(data["image"], data["label"], data["caption"], data["centre"]):
        parts = parse(caption)
        assert parts["shape"] == SHAPES[label]
        assert tuple(image[:, y, x]) == COLOURS[parts["colour"]], caption
        row, col = POSITIONS[parts["position"]]
        assert (int(y // (size / 3)), int(x // (size / 3))) == (row, col), caption
        # the background colour fills most of the picture; the shape's colour covers the rest
        pixels = image.reshape(3, -1).T
        is_bg = (pixels == COLOURS[parts["background"]]).all(1)
        is_fg = (pixels == COLOURS[parts["colour"]]).all(1)
        assert is_bg.mean() > 0.5 and (is_bg | is_fg).all(), caption
        # large shapes cover more pixels than small ones at the same resolution
        assert is_fg.sum() > (0.02 if parts["size"] == "large" else 0.005) * size * size


def test_shapes_module_batches_and_seed():
    def first_batch(seed):
        dm = ShapesDataModule(num_train=64, num_val=16, num_test=16, image_size=32, seed=seed, batch_size=16)
        dm.setup()
        return next(iter(dm.val_dataloader()))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert a["image"].shape == (16, 3, 32, 32) and a["image"].dtype == torch.float32
    assert 0.0 <= a["image"].min() and a["image"].max() <= 1.0
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"] and torch.equal(a["label"], b["label"])
    assert a["caption"] != c["caption"]
    for image, caption, label in zip(a["image"], a["caption"], a["label"]):
        parts = parse(caption)
        assert parts["shape"] == SHAPES[label]
        colour = torch.tensor(COLOURS[parts["colour"]], dtype=torch.float32)[:, None] / 255
        assert (image.flatten(1) - colour).abs().sum(0).lt(1e-6).any(), caption  # the caption's colour is drawn


def test_shapes_caption_dropout_rate():
    dm = ShapesDataModule(num_train=2000, num_val=200, num_test=10, image_size=16, batch_size=500, caption_dropout=0.3)
    dm.setup()
    captions = [c for batch in dm.train_dataloader() for c in batch["caption"]]
    assert abs(sum(c == "" for c in captions) / len(captions) - 0.3) < 0.04
    assert all(c for batch in dm.val_dataloader() for c in batch["caption"])


def test_shapes_config_builds(cfg_factory):
    cfg = cfg_factory("data=shapes", "data.image_size=16", "data.num_train=32")
    dm = build(cfg.data, "data")
    assert dm.has_captions and dm.num_classes == len(SHAPES) and dm.image_shape == (3, 16, 16)


@needs_coco
def test_coco_mini_loads_offline():
    dm = LaionDataModule(root=str(COCO), resolution=32, batch_size=16)
    dm.setup()
    assert (len(dm.splits["train"]), len(dm.splits["val"]), len(dm.splits["test"])) == (80, 79, 79)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 32) and batch["label"].eq(-1).all()
    assert all(isinstance(c, str) and len(c.split()) >= 4 for c in batch["caption"])
    assert len(set(dm.splits["train"].captions)) > 70  # real, distinct human captions
    assert batch["image"].std() > 0.1  # real photographs, not blank
    assert dm.has_captions


@needs_coco
def test_streaming_matches_memory_and_shards_by_rank():
    memory = LaionDataModule(root=str(COCO), resolution=24, batch_size=10)
    memory.setup()
    streamed = LaionDataModule(root=str(COCO), resolution=24, batch_size=10, streaming=True)
    streamed.setup()
    a = torch.cat([b["image"] for b in memory.val_dataloader()])
    b_batches = list(streamed.val_dataloader())
    b = torch.cat([b["image"] for b in b_batches])
    assert torch.equal(a, b)
    assert sum((bb["caption"] for bb in b_batches), []) == memory.splits["val"].captions

    def captions_of(rank):
        streamed._rank_and_world = lambda: (rank, 2)
        return [c for batch in streamed.train_dataloader() for c in batch["caption"]]

    rank0, rank1 = captions_of(0), captions_of(1)
    assert len(rank0) == len(rank1) == 40
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == sorted(memory.splits["train"].captions)


@needs_coco
def test_streaming_caption_dropout_and_limit():
    dm = LaionDataModule(root=str(COCO), resolution=16, batch_size=80, streaming=True, caption_dropout=0.5, limit=80)
    dm.setup()
    torch.manual_seed(0)
    dropped = [sum(c == "" for c in b["caption"]) for _ in range(5) for b in dm.train_dataloader()]
    assert 0.4 < sum(dropped) / 400 < 0.6
    assert all(c for b in dm.val_dataloader() for c in b["caption"])


def test_missing_path_is_one_line(tmp_path):
    with pytest.raises(ValueError) as error:
        LaionDataModule(root=str(tmp_path / "nowhere"))
    assert "nowhere" in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"root: .*notes\.txt is a file but not a shard \(expected a \.tar/\.parquet file"):
        LaionDataModule(root=str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match=r"no \.tar or \.parquet shards match .*\*\.tar"):
        LaionDataModule(root=str(tmp_path / "*.tar"))


def write_tar(path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as archive:
        for key, fields in samples.items():
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def jpeg_bytes(colour=(255, 0, 0)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@needs_coco
def test_corrupt_tar_is_one_line_naming_the_file(tmp_path):
    raw = (COCO / "train-00000.tar").read_bytes()
    bad = tmp_path / "train-00000.tar"
    bad.write_bytes(raw[: len(raw) // 2])
    dm = LaionDataModule(root=str(tmp_path), resolution=16)
    with pytest.raises(ConfigError) as error:
        dm.setup()
    message = str(error.value)
    assert str(bad) in message and "corrupt or truncated tar" in message and "\n" not in message
    # skip_bad keeps the readable first half and counts the rest as skipped
    dm = LaionDataModule(root=str(tmp_path), resolution=16, skip_bad=True, val_size=5)
    dm.setup()
    kept = len(dm.splits["train"]) + len(dm.splits["val"])
    assert 20 < kept < 80
    assert dm.skipped_counts()["data/skipped_bad"] == 1  # the damaged rest of the shard


def test_garbage_tar_and_bad_samples(tmp_path):
    garbage = tmp_path / "train-00000.tar"
    garbage.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(ConfigError, match="train-00000.tar: corrupt or truncated tar"):
        LaionDataModule(root=str(tmp_path), resolution=16).setup()

    shard = tmp_path / "train-00000.tar"
    write_tar(shard, {
        "000": {"jpg": jpeg_bytes(), "txt": b"a red picture"},
        "001": {"jpg": jpeg_bytes((0, 0, 255))},  # no caption
        "002": {"jpg": b"not a jpeg", "txt": b"broken image"},
        "003": {"jpg": jpeg_bytes((0, 255, 0)), "txt": b"a green picture"},
    })
    with pytest.raises(ConfigError, match=r"train-00000.tar: sample 001 has no caption \('txt'\)"):
        LaionDataModule(root=str(tmp_path), resolution=16, val_size=1).setup()
    dm = LaionDataModule(root=str(tmp_path), resolution=16, val_size=1, skip_bad=True, caption_column="txt")
    dm.setup()
    assert sorted(dm.splits["train"].captions + dm.splits["val"].captions) == ["a green picture", "a red picture"]
    assert dm.skipped_counts()["data/skipped_bad"] == 2
    # streamed, the bad samples are counted once each in the main process, however many passes
    dm = LaionDataModule(root=str(shard), resolution=16, val_size=1, skip_bad=True, streaming=True, batch_size=4)
    dm.setup()
    for _ in range(2):
        for batch in dm.train_dataloader():
            dm.on_before_batch_transfer(batch, 0)
            assert "skipped" not in batch and len(batch["caption"]) == len(batch["image"])
    assert dm.skipped_counts() == {"data/skipped_bad": 2, "data/skipped_bad_train": 2, "data/skipped_bad_val": 0, "data/skipped_bad_test": 0}
    write_tar(shard, {"000": {"jpg": b"not a jpeg", "txt": b"broken image"}})
    with pytest.raises(ConfigError, match="train-00000.tar: sample 000: cannot decode its image"):
        LaionDataModule(root=str(tmp_path), resolution=16, val_size=1).setup()


@needs_coco
def test_a_single_shard_file_as_root():
    dm = LaionDataModule(root=str(COCO / "val-00000.tar"), resolution=8, val_size=4)
    dm.setup()
    assert dm.files["train"] == [str(COCO / "val-00000.tar")] and len(dm.splits["train"]) + len(dm.splits["val"]) > 4


@pytest.mark.parametrize("streaming", [False, True])
def test_skipped_bad_samples_are_in_the_runs_metrics(cfg_factory, tmp_path, streaming):
    import json

    from latentbench.train import train

    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "train-00000.tar", {
        **{f"{i:03d}": {"jpg": jpeg_bytes((20 * i, 0, 0)), "txt": b"a picture"} for i in range(12)},
        "bad1": {"jpg": b"not a jpeg", "txt": b"broken image"},
        "bad2": {"jpg": jpeg_bytes()},  # no caption
    })
    metrics = train(cfg_factory("model=ae", "data=laion", f"data.root={shards}", "data.resolution=8", "data.val_size=4",
                                "data.batch_size=4", "data.skip_bad=true", f"data.streaming={streaming}", "callbacks.embedding_plot.methods=[pca]"))
    assert metrics["data/skipped_bad"] == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["data/skipped_bad_train"] == 2


def test_parquet_with_image_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    table = pa.table({
        "image": [{"bytes": jpeg_bytes(c), "path": None} for c in colours],
        "caption": [f"colour {c}" for c in colours],
        "label": [0, 1, 2, 3],
    })
    pq.write_table(table, tmp_path / "part-0.parquet")
    dm = LaionDataModule(root=str(tmp_path / "*.parquet"), resolution=8, caption_column="caption",
                         label_column="label", val_size=1, batch_size=4)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))  # no val/test shards: test reuses train
    assert sorted(batch["label"].tolist()) == [0, 1, 2, 3]
    for image, caption in zip(batch["image"], batch["caption"]):
        expected = torch.tensor(eval(caption.removeprefix("colour "))) / 255
        assert (image.mean((1, 2)) - expected).abs().max() < 0.1


@needs_coco
def test_laion_config_builds(cfg_factory):
    cfg = cfg_factory("data=laion", f"data.root={COCO}", "data.streaming=true", "data.resolution=32")
    dm = build(cfg.data, "data")
    assert dm.has_captions and dm.image_shape == (3, 32, 32) and dm.files["val"][0].endswith("val-00000.tar")


@needs_coco
def test_streaming_steps_per_epoch_keeps_ranks_in_step():
    dm = LaionDataModule(root=str(COCO), resolution=8, batch_size=32, streaming=True, steps_per_epoch=3, limit=75)
    dm.setup()
    for rank in (0, 1):  # 38 and 37 examples: 2 batches each per pass, an epoch of 3 takes a second pass
        dm._rank_and_world = lambda rank=rank: (rank, 2)
        loader = dm.train_dataloader()
        sizes = [len(b["caption"]) for b in loader]
        assert len(loader) == 3 and len(sizes) == 3 and sizes[0] == 32 and sizes[1] in (5, 6)
    with pytest.raises(ValueError, match="steps_per_epoch: a positive count for streaming: true"):
        LaionDataModule(root=str(COCO), steps_per_epoch=3)


@needs_coco
def test_hub_path_reads_the_same_data(tmp_path):
    """The hub code path (``datasets.load_dataset(name, streaming=True)``, images decoded by us) run
    offline on a local folder, which ``load_dataset`` accepts like a hub name; an unreachable hub
    dataset is one line."""
    hub = LaionDataModule(hub_name=str(COCO), resolution=16, batch_size=100, streaming=True)
    hub.setup()
    local = LaionDataModule(root=str(COCO), resolution=16, batch_size=100)
    local.setup()
    x, y = next(iter(hub.val_dataloader())), next(iter(local.val_dataloader()))
    assert torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"]
    with pytest.raises(ConfigError) as error:
        LaionDataModule(hub_name="nobody/no-such-laion").setup()
    assert "data.hub_name: cannot open 'nobody/no-such-laion'" in str(error.value) and "\n" not in str(error.value)
