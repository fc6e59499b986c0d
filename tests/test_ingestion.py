"""Ingestion of image-text shards: every PIL image mode to 8-bit RGB, and every kind of bad caption
as one line naming the shard and key (``data.skip_bad=false``) or a skip counted by reason (true)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentbench.data.image_files import images_to_arrays, open_image
from latentbench.data.image_text import LaionDataModule, generate_local
from latentbench.errors import ConfigError
from latentbench.instantiate import build
from tests.test_image_text import jpeg_bytes, write_tar

WHITE = (255, 255, 255)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def grey16(value: int, mode: str = "I;16") -> Image.Image:
    """A uniform 16-bit grey image; ``I;16B`` is big-endian (TIFF keeps it, PNG reopens as ``I;16``)."""
    dtype = ">u2" if mode == "I;16B" else "<u2"
    return Image.frombytes(mode, (12, 10), np.full((10, 12), value, dtype).tobytes())


def palette(index: int, transparent: int | None = None) -> Image.Image:
    """A uniform palette image of entry ``index``; entries 0 red, 1 (10, 200, 30)."""
    image = Image.new("P", (12, 10), index)
    image.putpalette([255, 0, 0, 10, 200, 30] + [0] * 762)
    if transparent is not None:
        image.info["transparency"] = transparent
    return image


def palette_alpha(alpha: int) -> Image.Image:
    image = palette(1).convert("PA")
    image.putalpha(alpha)
    return image


# (id, image, format written, expected RGB of every pixel): uniform images, so resizing changes nothing
MODES = [
    ("I;16 png 32768", grey16(32768), "PNG", (128, 128, 128)),  # PIL's convert("RGB") gives 255 (white)
    ("I;16 png 65535", grey16(65535), "PNG", WHITE),
    ("I;16 png 12850", grey16(50 * 257), "PNG", (50, 50, 50)),
    ("I;16B tiff", grey16(50 * 257, "I;16B"), "TIFF", (50, 50, 50)),
    ("I tiff 16-bit data", Image.fromarray(np.full((10, 12), 32768, np.int32)), "TIFF", (128, 128, 128)),
    ("F tiff in [0, 1]", Image.fromarray(np.full((10, 12), 0.25, np.float32)), "TIFF", (64, 64, 64)),  # PIL: black
    ("P png", palette(1), "PNG", (10, 200, 30)),
    ("P png transparent entry", palette(0, transparent=0), "PNG", WHITE),
    ("P png other entry transparent", palette(1, transparent=0), "PNG", (10, 200, 30)),
    ("PA tiff transparent", palette_alpha(0), "TIFF", WHITE),
    ("PA tiff opaque", palette_alpha(255), "TIFF", (10, 200, 30)),
    ("CMYK jpeg cyan", Image.new("CMYK", (12, 10), (255, 0, 0, 0)), "JPEG", (0, 255, 255)),
    ("CMYK jpeg black", Image.new("CMYK", (12, 10), (0, 0, 0, 255)), "JPEG", (0, 0, 0)),
    ("RGBA png transparent red", Image.new("RGBA", (12, 10), (255, 0, 0, 0)), "PNG", WHITE),  # PIL: red
    ("RGBA png half black", Image.new("RGBA", (12, 10), (0, 0, 0, 128)), "PNG", (127, 127, 127)),
    ("RGBA png opaque", Image.new("RGBA", (12, 10), (20, 40, 60, 255)), "PNG", (20, 40, 60)),
    ("LA png transparent", Image.new("LA", (12, 10), (0, 0)), "PNG", WHITE),  # PIL: black
    ("LA png opaque", Image.new("LA", (12, 10), (90, 255)), "PNG", (90, 90, 90)),
    ("L png", Image.new("L", (12, 10), 77), "PNG", (77, 77, 77)),
    ("1 png on", Image.new("1", (12, 10), 1), "PNG", WHITE),
    ("1 png off", Image.new("1", (12, 10), 0), "PNG", (0, 0, 0)),
    ("RGB png", Image.new("RGB", (12, 10), (200, 100, 50)), "PNG", (200, 100, 50)),
]
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif"}


def shard_with(path: Path, data: bytes, fmt: str) -> Path:
    """One sample ``000`` holding ``data``: a WebDataset tar for PNG/JPEG, a parquet file with an
    ``image`` bytes column for TIFF (img2dataset tars hold no .tif)."""
    if fmt == "TIFF":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"key": ["000"], "image": [{"bytes": data, "path": None}], "txt": ["a picture"]}),
                       path / "train-00000.parquet")
        return path / "train-00000.parquet"
    write_tar(path / "train-00000.tar", {"000": {EXTENSIONS[fmt]: data, "txt": b"a picture"}})
    return path / "train-00000.tar"


@pytest.mark.parametrize("image, fmt, expected", [m[1:] for m in MODES], ids=[m[0] for m in MODES])
def test_every_image_mode_reads_as_8bit_rgb(tmp_path, image, fmt, expected):
    shard = shard_with(tmp_path, encode(image, fmt), fmt)
    [example] = generate_local([str(shard)], skip_bad=False, image_column=None, caption_column="txt",
                               label_column=None, resolution=8, center_crop=True)
    pixels = example["image"]
    assert pixels.shape == (3, 8, 8) and pixels.dtype == np.uint8
    tolerance = 3 if fmt == "JPEG" else 0
    assert np.abs(pixels.reshape(3, -1).astype(int) - np.array(expected)[:, None]).max() <= tolerance, pixels[:, 0, 0]


@pytest.mark.parametrize("image, fmt, expected", [m[1:] for m in MODES], ids=[m[0] for m in MODES])
def test_image_files_use_the_same_conversion(tmp_path, image, fmt, expected):
    """``data=images`` / ``data=faces`` read files through the same :func:`to_rgb` (and grey from it)."""
    path = tmp_path / f"picture.{EXTENSIONS[fmt]}"
    path.write_bytes(encode(image, fmt))
    rgb = images_to_arrays([open_image(path)], "rgb", 8, True, "test")[0]
    grey = images_to_arrays([open_image(path)], "grayscale", 8, True, "test")[0]
    tolerance = 3 if fmt == "JPEG" else 0
    assert np.abs(rgb.reshape(3, -1).astype(int) - np.array(expected)[:, None]).max() <= tolerance
    if len(set(expected)) == 1:  # grey pictures stay exactly grey
        assert grey.shape == (1, 8, 8) and np.abs(grey.astype(int) - expected[0]).max() <= tolerance


def test_32bit_and_float_images_are_stretched_over_their_own_range(tmp_path):
    """``I`` beyond 16 bits and ``F`` beyond [0, 1] have no standard white: min -> 0, max -> 255."""
    ramp = np.repeat(np.linspace(0, 1, 16)[None], 16, axis=0)
    for name, values in {"i32": (ramp * 4_000_000 - 1_000_000).astype(np.int32), "f": (ramp * 1000).astype(np.float32)}.items():
        folder = tmp_path / name
        folder.mkdir()
        shard = shard_with(folder, encode(Image.fromarray(values), "TIFF"), "TIFF")
        [example] = generate_local([str(shard)], skip_bad=False, image_column=None, caption_column="txt",
                                   label_column=None, resolution=16, center_crop=True)
        row = example["image"][0, 0].astype(int)
        assert row[0] == 0 and row[-1] == 255 and (np.diff(row) > 0).all(), row


# --- captions ---------------------------------------------------------------------------------

# (id, caption bytes, the fault as the error states it, the reason it is counted under)
FAULTS = [
    ("not UTF-8", b"hello\xff world", "caption is not UTF-8 text (byte 0xff at 5)", "caption not UTF-8"),
    ("latin-1", b"a caf\xe9 au lait", "caption is not UTF-8 text (byte 0xe9 at 5)", "caption not UTF-8"),
    ("empty", b"", "caption is empty (or only whitespace)", "empty caption"),
    ("whitespace", b" \n\t  ", "caption is empty (or only whitespace)", "empty caption"),
    ("too long", b"x" * 2001, "caption is 2001 characters long, over data.max_caption_chars=2000", "caption too long"),
]
GOOD = {"000": (255, 0, 0), "002": (0, 255, 0), "003": (0, 0, 255)}


def captioned_shard(folder: Path, caption: bytes, kind: str) -> Path:
    """Three good samples and ``000123`` with ``caption``, as a tar or a parquet file (binary captions)."""
    keys = ["000", "000123", "002", "003"]
    captions = [f"sample {key}".encode() for key in keys]
    captions[1] = caption
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        images = [{"bytes": jpeg_bytes(GOOD.get(key, (9, 9, 9))), "path": None} for key in keys]
        pq.write_table(pa.table({"key": keys, "image": images, "txt": pa.array(captions, pa.binary())}),
                       folder / "train-00000.parquet")
        return folder / "train-00000.parquet"
    write_tar(folder / "train-00000.tar", {key: {"jpg": jpeg_bytes(GOOD.get(key, (9, 9, 9))), "txt": text}
                                           for key, text in zip(keys, captions)})
    return folder / "train-00000.tar"


@pytest.mark.parametrize("kind", ["tar", "parquet"])
@pytest.mark.parametrize("caption, fault, reason", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_bad_caption_is_one_line_or_a_counted_skip(tmp_path, caption, fault, reason, kind):
    shard = captioned_shard(tmp_path, caption, kind)
    with pytest.raises(ConfigError) as error:
        LaionDataModule(root=str(tmp_path), resolution=8, val_size=1).setup()
    assert str(error.value) == f"{shard}: sample 000123: {fault}"

    dm = LaionDataModule(root=str(tmp_path), resolution=8, val_size=1, skip_bad=True)
    dm.setup()
    assert sorted(dm.splits["train"].captions + dm.splits["val"].captions) == ["sample 000", "sample 002", "sample 003"]
    assert dm.skipped_counts()["data/skipped_bad"] == 1 and dm.skipped_reasons() == {reason: 1}


def test_caption_limit_option_and_good_edge_cases(tmp_path, cfg_factory):
    shard = captioned_shard(tmp_path, "\ufeff  a café, naïve 東京  \n".encode() + b"y" * 1900, "tar")
    dm = LaionDataModule(root=str(shard), resolution=8, val_size=1, batch_size=4)
    dm.setup()  # UTF-8 with a byte-order mark, non-ASCII, 1,919 characters: a good caption
    captions = dm.splits["train"].captions + dm.splits["val"].captions
    assert "a café, naïve 東京  \n" + "y" * 1900 in captions
    with pytest.raises(ConfigError, match=r"sample 000123: caption is 1919 characters long, over data.max_caption_chars=1000$"):
        LaionDataModule(root=str(shard), resolution=8, val_size=1, max_caption_chars=1000).setup()
    write_tar(shard, {"000": {"jpg": jpeg_bytes(), "txt": b"z" * 100_000}, "001": {"jpg": jpeg_bytes(), "txt": b"ok"}})
    LaionDataModule(root=str(shard), resolution=8, val_size=1, max_caption_chars=None).setup()  # null: no limit
    with pytest.raises(ValueError, match="max_caption_chars: must be positive"):
        LaionDataModule(root=str(shard), max_caption_chars=0)
    assert build(cfg_factory("data=laion", f"data.root={shard}", "data.max_caption_chars=50").data, "data").max_caption_chars == 50
    assert build(cfg_factory("data=laion", f"data.root={shard}").data, "data").max_caption_chars == 2000


def test_streamed_skips_are_counted_by_reason(tmp_path, caplog):
    write_tar(tmp_path / "train-00000.tar", {
        **{f"{i:03d}": {"jpg": jpeg_bytes((20 * i, 0, 0)), "txt": f"picture {i}".encode()} for i in range(6)},
        "bad1": {"jpg": jpeg_bytes(), "txt": b"\xff\xfe"},
        "bad2": {"jpg": jpeg_bytes(), "txt": b"   "},
        "bad3": {"jpg": jpeg_bytes(), "txt": b"w" * 3000},
        "bad4": {"jpg": b"not a jpeg", "txt": b"broken image"},
        "bad5": {"jpg": jpeg_bytes(), "txt": b""},
    })
    dm = LaionDataModule(root=str(tmp_path), resolution=8, val_size=2, skip_bad=True, streaming=True, batch_size=4)
    dm.setup()
    with caplog.at_level(logging.WARNING, logger="latentbench.data.image_text"):
        for _ in range(2):  # every pass reads the bad samples again; each is counted once
            for batch in dm.train_dataloader():
                dm.on_before_batch_transfer(batch, 0)
                assert "skipped" not in batch
    assert dm.skipped_counts()["data/skipped_bad"] == 5
    assert dm.skipped_reasons("train") == {"caption not UTF-8": 1, "empty caption": 2, "caption too long": 1, "undecodable image": 1}
    assert "skipped 5 bad sample(s) in train so far (skip_bad: true): 2 empty caption, " in caplog.text
    assert "train-00000.tar: sample bad1: caption is not UTF-8 text (byte 0xff at 0)" in caplog.text
