"""Image-text data: captions beside the images, and the ``laion`` module for LAION-style subsets.

:class:`CaptionedImageDataModule` is the in-memory base of captioned sets (``shapes``, and ``laion``
with ``streaming: false``); its batches add a caption list to the common schema::

    {"image": (B, 3, H, W) float in [0, 1], "label": (B,) int64 (-1 when none), "caption": list[str]}

:class:`LaionDataModule` reads WebDataset shards as img2dataset writes them (``KEY.jpg`` +
``KEY.txt`` (+ ``KEY.json``)), parquet files with image bytes and a caption column, or a dataset on
the Hugging Face hub. Every source is turned into one HF ``IterableDataset`` of decoded, resized
examples whose shards are the files; ``streaming: true`` trains from it directly (split across DDP
ranks by ``datasets.distributed.split_dataset_by_node`` and across loader workers by ``datasets``,
nothing copied locally), ``streaming: false`` reads it once into memory.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from datasets import Array3D, Dataset, DatasetDict, Features, IterableDataset, Value
from datasets.distributed import split_dataset_by_node
from PIL import Image
from torch.utils.data import DataLoader

from latentbench.data.base import ImageDataModule, TensorSplit, dataset_from_columns, image_column
from latentbench.data.image_files import to_rgb
from latentbench.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SHARD_SUFFIXES = (".tar", ".parquet")
MAX_CAPTION_CHARS = 2000  # data.max_caption_chars: LAION alt texts are mostly < 300; longer is page text or spam


def captioned_features(shape: tuple[int, int, int]) -> Features:
    """HF features of captioned examples: ``image`` uint8 (C, H, W), ``label`` int64, ``caption`` str."""
    return Features({"image": Array3D(shape=shape, dtype="uint8"), "label": Value("int64"), "caption": Value("string")})


def captioned_dataset(images: np.ndarray, labels: np.ndarray, captions: list[str]) -> Dataset:
    """Wrap uint8 images ``(N, C, H, W)``, labels ``(N,)`` and N captions as an HF Dataset."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    if not len(images) == len(labels) == len(captions):
        raise ValueError(f"{len(images)} images, {len(labels)} labels and {len(captions)} captions differ in number")
    features = captioned_features(tuple(int(s) for s in images.shape[1:]))
    return dataset_from_columns({"image": image_column(images), "label": np.asarray(labels, dtype=np.int64),
                                 "caption": list(captions)}, features)


def drop_captions(captions: list[str], probability: float) -> list[str]:
    """Replace each caption by ``""`` with ``probability`` (classifier-free guidance training)."""
    if probability <= 0.0:
        return captions
    keep = torch.rand(len(captions)) >= probability
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


class CaptionedSplit(TensorSplit):
    """A :class:`TensorSplit` with one caption per image; batches gain ``"caption": list[str]``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, captions: list[str], pixel_scale: float,
                 flatten: bool, caption_dropout: float = 0.0):
        super().__init__(images, labels, pixel_scale, flatten)
        self.captions, self.caption_dropout = captions, caption_dropout

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        batch = super().__getitem__(indices)
        batch["caption"] = drop_captions([self.captions[i] for i in indices], self.caption_dropout)
        return batch


class CaptionedImageDataModule(ImageDataModule):
    """In-memory image-caption data: :class:`ImageDataModule` plus a ``caption`` column and batch field.

    Subclasses return splits with a ``caption`` string column from ``load_splits`` (see
    :func:`captioned_dataset`).

    Args:
        caption_dropout (`float`): probability in [0, 1) that a training caption becomes ``""``.
        **kwargs: see :class:`~latentbench.data.base.ImageDataModule`.
    """

    def __init__(self, caption_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout: must lie in [0, 1), got {caption_dropout}")
        self.caption_dropout = caption_dropout

    @property
    def has_captions(self) -> bool:
        return True

    @property
    def class_names(self) -> list[str] | None:
        """Names of the label classes (for zero-shot classification), or None."""
        return None

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.splits["train"].caption_dropout = self.caption_dropout

    def _to_tensors(self, split: Dataset) -> CaptionedSplit:
        tensors = super()._to_tensors(split.remove_columns("caption"))
        return CaptionedSplit(tensors.images, tensors.labels, list(split["caption"]), tensors.pixel_scale, tensors.flatten)


# --- reading shards ---------------------------------------------------------------------------


class BadSample(ValueError):
    """One sample (or a whole shard) that cannot be read; the message names the file and key.

    ``reason`` is a short tag of what is wrong (``"caption not UTF-8"``, ``"empty caption"``, ...)
    by which skipped samples are counted.
    """

    def __init__(self, message: str, reason: str = "bad sample"):
        super().__init__(message)
        self.reason = reason


def iter_tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Samples of a WebDataset tar: ``(key, {"jpg": bytes, "txt": bytes, ...})``, files grouped by key.

    Raises BadSample naming the file when the tar is corrupt or truncated.
    """
    key, fields = None, {}
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                directory, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot or stem.startswith("_"):
                    continue  # e.g. __index__ files some writers add
                member_key = f"{directory}/{stem}" if directory else stem
                data = archive.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"unexpected end of data in {member.name}")
                if member_key != key and key is not None:
                    yield key, fields
                    fields = {}
                key = member_key
                fields[ext.lower()] = data
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        raise BadSample(f"{path}: corrupt or truncated tar ({type(error).__name__}: {error})", "damaged shard") from None
    if key is not None:
        yield key, fields


def iter_parquet_samples(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a parquet file as ``(key, row)``; the key is the ``key`` column or ``<file>:<row>``."""
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
        row = 0
        for batch in handle.iter_batches(batch_size=256):
            for record in batch.to_pylist():
                yield str(record.get("key", f"{Path(path).name}:{row}")), record
                row += 1
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise BadSample(f"{path}: corrupt or unreadable parquet file ({type(error).__name__}: {error})", "damaged shard") from None


def decode_image(value: Any) -> Image.Image:
    """An 8-bit RGB PIL image from encoded bytes, an HF image dict ``{"bytes": ...}`` or a PIL image,
    whatever its mode (16-bit grey, palette, CMYK, alpha onto white: see :func:`~latentbench.data.image_files.to_rgb`)."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if not isinstance(value, (bytes, bytearray)):
        raise ValueError(f"expected encoded image bytes, got {type(value).__name__}")
    image = Image.open(io.BytesIO(value))
    image.load()
    return to_rgb(image)


def square_image(image: Image.Image, resolution: int, center_crop: bool) -> np.ndarray:
    """uint8 ``(3, R, R)``: shorter side resized to R then centre-cropped, or (center_crop=false) the
    whole image resized to R x R."""
    if center_crop:
        w, h = image.size
        scale = resolution / min(w, h)
        image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = image.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    else:
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def text_of(value: Any) -> str | None:
    """``value`` as text without surrounding whitespace (bytes decoded as UTF-8, a leading byte-order
    mark dropped); None when missing. ValueError ``not UTF-8 text (byte 0xff at 5)`` for other bytes."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8").removeprefix("\ufeff").strip()
        except UnicodeDecodeError as error:
            raise ValueError(f"not UTF-8 text (byte 0x{value[error.start]:02x} at {error.start})") from None
    return str(value).strip()


def caption_of(fields: dict[str, Any], caption_column: str, max_chars: int | None, source: str, key: str) -> str:
    """The sample's caption, stripped; BadSample naming ``source`` and ``key`` when it is missing, not
    UTF-8, empty (or only whitespace) or longer than ``max_chars`` characters (None: no limit)."""
    try:
        caption = text_of(field_value(fields, caption_column))
    except ValueError as error:
        raise BadSample(f"{source}: sample {key}: caption is {error}", "caption not UTF-8") from None
    if caption is None:
        raise BadSample(f"{source}: sample {key} has no caption ('{caption_column}'); "
                        f"set data.caption_column to the caption field or data.skip_bad=true to skip it", "no caption")
    if not caption:
        raise BadSample(f"{source}: sample {key}: caption is empty (or only whitespace)", "empty caption")
    if max_chars is not None and len(caption) > max_chars:
        raise BadSample(f"{source}: sample {key}: caption is {len(caption)} characters long, "
                        f"over data.max_caption_chars={max_chars}", "caption too long")
    return caption


def field_value(fields: dict[str, Any], column: str) -> Any:
    """``fields[column]``, else the ``column`` entry of the sample's ``json`` metadata, else None."""
    if fields.get(column) is not None:
        return fields[column]
    meta = fields.get("json")
    if isinstance(meta, (bytes, bytearray, str)):
        try:
            meta = json.loads(meta)
        except ValueError:
            return None
    return meta.get(column) if isinstance(meta, dict) else None


def keyword_label(caption: str, keywords: list[str]) -> int:
    """Index of the first of ``keywords`` (in list order) that occurs in ``caption`` as a whole word,
    case-insensitively, also as a simple plural (``dog`` matches "dogs"); -1 when none does."""
    for index, keyword in enumerate(keywords):
        if re.search(rf"\b{re.escape(keyword)}s?\b", caption, flags=re.IGNORECASE):
            return index
    return -1


def to_example(key: str, fields: dict[str, Any], source: str, image_column: str | None, caption_column: str,
               label_column: str | None, resolution: int, center_crop: bool,
               label_keywords: tuple[str, ...] | None = None,
               max_caption_chars: int | None = MAX_CAPTION_CHARS) -> dict[str, Any]:
    """One decoded example ``{"image": uint8 (3, R, R) in [0, 255], "caption", "label", "key"}``;
    BadSample names ``source`` and ``key`` when the image or the caption is missing or broken (see
    :func:`caption_of`)."""
    columns = [image_column] if image_column else [c for c in (*IMAGE_EXTENSIONS, "image") if c in fields]
    if not columns or fields.get(columns[0]) is None:
        raise BadSample(f"{source}: sample {key} has no image ({image_column or '/'.join(IMAGE_EXTENSIONS)})", "no image")
    try:
        image = square_image(decode_image(fields[columns[0]]), resolution, center_crop)
    except Exception as error:
        raise BadSample(f"{source}: sample {key}: cannot decode its image ({type(error).__name__}: {error})",
                        "undecodable image") from None
    caption = caption_of(fields, caption_column, max_caption_chars, source, key)
    label = -1
    if label_column:
        value = field_value(fields, label_column)
        if value is None:
            raise BadSample(f"{source}: sample {key} has no label ('{label_column}')", "no label")
        label = int(text_of(value))
    if label_keywords:
        label = keyword_label(caption, label_keywords)
    return {"image": image, "caption": caption, "label": label, "key": key}


def bad_example(key: str, error: BadSample, resolution: int) -> dict[str, Any]:
    """The stand-in for a sample that ``skip_bad`` skips: it travels to the data module, which drops
    and counts it there (the reader may run in a loader worker, whose counts would be lost); ``bad``
    is the error's short ``reason`` (the whole message is logged where it is skipped)."""
    return {"image": np.zeros((3, resolution, resolution), dtype=np.uint8), "caption": "", "label": -1, "key": key,
            "bad": error.reason or "bad sample"}


def generate_local(files: list[str], skip_bad: bool, **options) -> Iterator[dict[str, Any]]:
    """Examples of local shards, file after file (``files`` is what ``datasets`` splits into shards);
    with ``skip_bad`` a bad sample or the damaged rest of a shard yields one :func:`bad_example`."""
    for path in files:
        reader = iter_parquet_samples if path.endswith(".parquet") else iter_tar_samples
        key = None
        try:
            for key, fields in reader(path):
                try:
                    yield {**to_example(key, fields, path, **options), "bad": ""}
                except BadSample as error:
                    if not skip_bad:
                        raise ConfigError(str(error)) from None
                    log.warning("skipping: %s", error)
                    yield bad_example(f"{path}:{key}", error, options["resolution"])
        except BadSample as error:  # the shard itself is damaged
            if not skip_bad:
                raise ConfigError(str(error)) from None
            log.warning("skipping the rest of the shard: %s", error)
            yield bad_example(f"{path}:after {key}", error, options["resolution"])


def example_features(resolution: int) -> Features:
    """``bad`` is "" for a good example and the short reason for a skipped one (see :func:`bad_example`)."""
    return Features({"image": Array3D(shape=(3, resolution, resolution), dtype="uint8"), "caption": Value("string"),
                     "label": Value("int64"), "key": Value("string"), "bad": Value("string")})


def resolve_shards(pattern: str) -> list[str]:
    """Shard files of a folder (every ``*.tar`` / ``*.parquet`` in it) or a glob pattern, sorted."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = [str(p) for p in sorted(path.iterdir()) if p.suffix in SHARD_SUFFIXES]
    else:
        files = sorted(f for f in glob.glob(str(path)) if f.endswith(SHARD_SUFFIXES))
    return files


class LaionCollate:
    """Stacks decoded examples into a batch, dropping captions with ``caption_dropout``.

    Skipped (bad) examples are left out; ``batch["skipped"]`` maps their keys to their reasons, for
    the data module to count in the main process.
    """

    def __init__(self, caption_dropout: float = 0.0):
        self.caption_dropout = caption_dropout

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        skipped = {str(e["key"]): str(e["bad"]) for e in examples if e.get("bad")}
        images = torch.stack([torch.as_tensor(np.asarray(e["image"], dtype=np.uint8)) for e in examples])
        keep = [i for i, e in enumerate(examples) if not e.get("bad")]
        images, examples = images[keep], [examples[i] for i in keep]
        return {
            "image": images.float().div_(255.0),
            "label": torch.as_tensor([int(e["label"]) for e in examples], dtype=torch.int64),
            "caption": drop_captions([e["caption"] for e in examples], self.caption_dropout),
            "skipped": skipped,
        }


class StreamingLoader(DataLoader):
    """DataLoader over a streamed split that reshuffles every pass (``IterableDataset.set_epoch``)
    and saves the pass in checkpoints (a resumed run restarts the interrupted pass).

    With ``steps_per_epoch`` an epoch is exactly that many batches, drawn from as many passes over
    the data as it takes: every DDP rank then takes the same number of steps, whatever the shard
    sizes (an uneven count would leave one rank waiting in the gradient all-reduce).
    """

    def __init__(self, dataset: IterableDataset, steps_per_epoch: int | None = None, **kwargs):
        super().__init__(dataset, **kwargs)
        self.epoch = 0
        self.steps_per_epoch = steps_per_epoch

    def _one_pass(self):
        self.dataset.set_epoch(self.epoch)
        self.epoch += 1
        return super().__iter__()

    def _fixed_steps(self):
        produced = 0
        while produced < self.steps_per_epoch:
            empty = True
            for batch in self._one_pass():
                empty = False
                yield batch
                produced += 1
                if produced == self.steps_per_epoch:
                    return
            if empty:
                raise ConfigError("data: the streamed training split is empty on this rank (fewer examples or shards than ranks x workers)")

    def __iter__(self):
        return self._fixed_steps() if self.steps_per_epoch else self._one_pass()

    def __len__(self) -> int:
        if self.steps_per_epoch:
            return self.steps_per_epoch
        return super().__len__()  # raises TypeError: a stream has no length

    def state_dict(self) -> dict[str, int]:
        return {"epoch": max(self.epoch - 1, 0)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state.get("epoch", 0))


class LaionDataModule(CaptionedImageDataModule):
    """LAION-style image-text data: local WebDataset/parquet shards or a hub dataset, in memory or streamed.

    Args:
        root (`str`, *optional*): a folder of shards or a glob pattern. In a folder, ``train-*``
            files are the training split, ``val-*`` validation and ``test-*`` test (``.tar`` or
            ``.parquet``); without ``val-*`` files, ``val_size`` examples are carved out of train;
            without ``test-*`` files the validation shards serve as test too. A glob (or a folder
            without ``train-*`` files) gives the training shards only.
        hub_name (`str`, *optional*): a Hugging Face dataset used when ``root`` is null (online only).
        hub_splits (`dict`): hub split names for ``train`` / ``val`` / ``test`` (null: carve / reuse val).
        streaming (`bool`): stream the shards (large subsets) instead of reading them into memory.
        resolution (`int`): side R of the square images served, ``(3, R, R)``.
        center_crop (`bool`): resize the shorter side to R and crop the centre; false squashes the
            whole image to R x R.
        image_column (`str`, *optional*): image field; null picks the first of jpg/jpeg/png/webp/image.
        caption_column (`str`): caption field (``txt`` in img2dataset shards; a parquet column or
            a key of the sample's ``json`` otherwise).
        label_column (`str`, *optional*): integer class field; null serves label -1.
        class_names (`list[str]`, *optional*): names of the label classes (zero-shot evaluation).
        label_keywords (`list[str]`, *optional*): labels from the captions instead (data without class
            labels, e.g. coco-mini): a sample's label is the index of the first keyword (in list
            order) that occurs in its caption as a whole word or simple plural ("dog"/"dogs"), -1
            when none does; the keywords are the ``class_names``.
        caption_dropout (`float`): probability that a training caption becomes ``""``.
        skip_bad (`bool`): skip (and count by reason, with a warning) samples without an image or
            with an undecodable one, samples whose caption is missing, not UTF-8, empty or too long,
            and damaged shards, instead of stopping with a one-line error naming the file and key.
        max_caption_chars (`int`, *optional*): a longer caption (after stripping whitespace) is a bad
            sample; null: no limit.
        shuffle_buffer (`int`): examples in the streaming shuffle buffer (shard order is shuffled too).
        steps_per_epoch (`int`, *optional*): streaming only: a training epoch is exactly this many
            batches per rank (passes over the data repeat as needed), so DDP ranks stay in step
            whatever the shard sizes; null: one pass over the rank's shards.
        **kwargs: see :class:`~latentbench.data.base.ImageDataModule` (``limit`` caps every split;
            in streaming mode ``val_size`` must be a count; ``on_device``, ``flatten`` and ``pad_to`` are in-memory only).
    """

    supports_fused_steps = False  # batches come from a streaming loader

    def __init__(
        self,
        root: str | None = None,
        hub_name: str | None = None,
        hub_splits: dict[str, str | None] | None = None,
        streaming: bool = False,
        resolution: int = 64,
        center_crop: bool = True,
        image_column: str | None = None,
        caption_column: str = "txt",
        label_column: str | None = None,
        class_names: list[str] | None = None,
        label_keywords: list[str] | None = None,
        caption_dropout: float = 0.0,
        skip_bad: bool = False,
        max_caption_chars: int | None = MAX_CAPTION_CHARS,
        shuffle_buffer: int = 1000,
        steps_per_epoch: int | None = None,
        **kwargs,
    ):
        super().__init__(caption_dropout=caption_dropout, **kwargs)
        if resolution < 8:
            raise ValueError(f"resolution: must be at least 8 pixels, got {resolution}")
        if shuffle_buffer <= 0:
            raise ValueError(f"shuffle_buffer: must be positive, got {shuffle_buffer}")
        if max_caption_chars is not None and max_caption_chars <= 0:
            raise ValueError(f"max_caption_chars: must be positive (or null: no limit), got {max_caption_chars}")
        if steps_per_epoch is not None and (steps_per_epoch <= 0 or not streaming):
            raise ValueError(f"steps_per_epoch: a positive count for streaming: true, got {steps_per_epoch} (streaming={streaming})")
        if root is None and not hub_name:
            raise ValueError("root: null and hub_name: null; give a folder or glob of shards (root) or a hub dataset (hub_name)")
        if streaming and (self.on_device or self.flatten or self.pad_to is not None):
            raise ValueError("streaming: true cannot be combined with on_device, flatten or pad_to (in-memory options)")
        if label_keywords is not None:
            if label_column or class_names:
                raise ValueError("label_keywords: derives labels and class names from the captions; leave label_column and class_names null")
            if not label_keywords or any(not isinstance(k, str) or not k.strip() for k in label_keywords):
                raise ValueError(f"label_keywords: expected a non-empty list of words, got {list(label_keywords)}")
            class_names = [k.strip() for k in label_keywords]
        self.label_keywords = list(class_names) if label_keywords is not None else None
        self.root, self.hub_name, self.streaming = root, hub_name, streaming
        self.hub_splits = {"train": "train", "val": "validation", "test": None, **(hub_splits or {})}
        self.resolution, self.center_crop, self.skip_bad = resolution, center_crop, skip_bad
        self.image_column, self.caption_column, self.label_column = image_column, caption_column, label_column
        self._class_names, self.shuffle_buffer = list(class_names) if class_names else None, shuffle_buffer
        self.steps_per_epoch, self.max_caption_chars = steps_per_epoch, max_caption_chars
        self.files = self._find_files(root) if root is not None else None
        self.streams: dict[str, IterableDataset] = {}
        self.skipped: dict[str, dict[str, str]] = {"train": {}, "val": {}, "test": {}}  # key -> reason

    def note_skipped(self, split: str, skipped: dict[str, str]) -> None:
        """Count skipped bad samples (``{key: reason}``) once per key (a streamed split is read again every epoch)."""
        new = {key: reason for key, reason in skipped.items() if key not in self.skipped[split]}
        if new:
            self.skipped[split].update(new)
            reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped_reasons(split).most_common())
            log.warning("data: skipped %d bad sample(s) in %s so far (skip_bad: true): %s", len(self.skipped[split]), split, reasons)

    def skipped_reasons(self, split: str | None = None) -> Counter:
        """Skipped samples per reason (``"empty caption"``, ``"undecodable image"``, ...), of ``split`` or all splits."""
        splits = [split] if split else list(self.skipped)
        return Counter(reason for name in splits for reason in self.skipped[name].values())

    def skipped_counts(self) -> dict[str, int]:
        """``{"data/skipped_bad": total, "data/skipped_bad_<split>": ...}`` for the run's metrics (skip_bad only)."""
        if not self.skip_bad:
            return {}
        counts = {f"data/skipped_bad_{split}": len(keys) for split, keys in self.skipped.items()}
        return {"data/skipped_bad": sum(counts.values()), **counts}

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "skipped" in batch:
            skipped = batch.pop("skipped")
            if skipped:
                self.note_skipped(self.current_split(), skipped)
        return batch

    def current_split(self) -> str:
        trainer = self.trainer
        if trainer is None or trainer.training:
            return "train"
        return "test" if trainer.testing else "val"

    @staticmethod
    def _find_files(root: str) -> dict[str, list[str]]:
        path = Path(root).expanduser()
        if path.is_file():
            if not root.endswith(SHARD_SUFFIXES):
                raise ValueError(f"root: {root} is a file but not a shard (expected a .tar/.parquet file, a folder of them or a glob pattern)")
            return {"train": [str(path)], "val": [], "test": []}
        if not path.is_dir() and not any(ch in root for ch in "*?["):
            raise ValueError(f"root: {root} does not exist (expected a folder of .tar/.parquet shards or a glob pattern)")
        if path.is_dir():
            files = {split: resolve_shards(str(path / f"{split}-*")) for split in ("train", "val", "test")}
            if not files["train"]:
                files = {"train": resolve_shards(str(path)), "val": [], "test": []}
        else:
            files = {"train": resolve_shards(root), "val": [], "test": []}
        if not files["train"]:
            raise ValueError(f"root: no .tar or .parquet shards match {root}")
        return files

    @property
    def source_image_shape(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)

    @property
    def num_classes(self) -> int | None:
        return len(self._class_names) if self._class_names else None

    @property
    def class_names(self) -> list[str] | None:
        return self._class_names

    # -- sources ---------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        return {"image_column": self.image_column, "caption_column": self.caption_column,
                "label_column": self.label_column, "resolution": self.resolution, "center_crop": self.center_crop,
                "label_keywords": tuple(self.label_keywords) if self.label_keywords else None,  # a tuple: HF shards over lists
                "max_caption_chars": self.max_caption_chars}

    def has_split(self, split: str) -> bool:
        if self.files is not None:
            return bool(self.files[split])
        return self.hub_splits.get(split) is not None

    def stream(self, split: str) -> IterableDataset:
        """The examples of ``split`` (``train``, ``val`` or ``test``) as an HF IterableDataset, unshuffled;
        its shards are the split's files."""
        if self.files is not None:
            return IterableDataset.from_generator(
                generate_local, features=example_features(self.resolution),
                gen_kwargs={"files": self.files[split], "skip_bad": self.skip_bad, **self._options()},
            )
        return self._hub_stream(self.hub_splits[split])

    def _hub_stream(self, split: str) -> IterableDataset:
        from datasets import Image as ImageFeature
        from datasets import load_dataset

        try:
            dataset = load_dataset(self.hub_name, split=split, streaming=True)
        except Exception as error:  # offline, unknown name, no such split: one line for the user
            raise ConfigError(f"data.hub_name: cannot open '{self.hub_name}' split '{split}' from the hub "
                              f"({type(error).__name__}); offline, set data.root=<folder or glob of local shards>") from None
        columns = dataset.column_names or []
        image_column = self.image_column or next((c for c in (*IMAGE_EXTENSIONS, "image") if c in columns), None)
        if image_column is None:
            raise ConfigError(f"data.image_column: '{self.hub_name}' has no image column among {columns}")
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))  # decode here, to name bad samples
        options = {**self._options(), "image_column": image_column}
        source = f"{self.hub_name}[{split}]"

        def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
            key = str(row.get("__key__", row.get("key", index)))
            try:
                return {**to_example(key, row, source, **options), "bad": ""}
            except BadSample as error:
                if not self.skip_bad:
                    raise ConfigError(str(error)) from None
                log.warning("skipping: %s", error)
                return bad_example(key, error, self.resolution)

        return dataset.map(convert, with_indices=True, remove_columns=columns, features=example_features(self.resolution))

    # -- in memory -------------------------------------------------------------------------

    def _read(self, split: str) -> Dataset:
        examples = self.stream(split)
        if self.limit is not None:
            examples = examples.take(self.limit)
        images, labels, captions = [], [], []
        for example in examples.with_format("numpy"):
            if example["bad"]:
                self.note_skipped(split, {str(example["key"]): str(example["bad"])})
                continue
            images.append(example["image"])
            labels.append(example["label"])
            captions.append(example["caption"])
        if not images:
            raise ConfigError(f"data.root: the {split} shards of {self.root or self.hub_name} hold no usable samples")
        return captioned_dataset(np.stack(images).astype(np.uint8), np.asarray(labels), captions)

    def load_splits(self) -> DatasetDict:
        splits = {"train": self._read("train")}
        if self.has_split("val"):
            splits["val"] = self._read("val")
        if self.has_split("test"):
            splits["test"] = self._read("test")
        elif "val" in splits:
            splits["test"] = splits["val"]
        else:
            splits["test"] = splits["train"]  # nothing held out at all: test on the training set
            log.warning("data: %s has no val or test shards; validation is carved out of train and test reuses train",
                        self.root or self.hub_name)
        return DatasetDict(splits)

    # -- streaming -------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if not self.streaming:
            super().setup(stage)
            return
        if self.streams:
            return
        train = self.stream("train")
        if self.limit is not None:
            train = train.take(self.limit)
        if self.has_split("val"):
            val = self.stream("val")
        else:
            if isinstance(self.val_size, float):
                raise ConfigError(f"data.val_size: streaming without val shards needs a count of validation examples, got the fraction {self.val_size}")
            val, train = train.take(self.val_size), train.skip(self.val_size)
        test = self.stream("test") if self.has_split("test") else val
        if self.limit is not None:
            val, test = val.take(self.limit), test.take(self.limit)
        self.streams = {"train": train, "val": val, "test": test}

    def _stream_loader(self, split: str, train: bool) -> DataLoader:
        rank, world_size = self._rank_and_world()
        dataset = self.streams[split]
        if train:
            dataset = dataset.shuffle(seed=torch.initial_seed() % 2**32, buffer_size=self.shuffle_buffer)
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        return StreamingLoader(
            dataset.with_format("numpy"),
            steps_per_epoch=self.steps_per_epoch if train else None,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=LaionCollate(self.caption_dropout if train else 0.0),
        )

    def train_dataloader(self) -> DataLoader:
        return self._stream_loader("train", True) if self.streaming else super().train_dataloader()

    def val_dataloader(self) -> DataLoader:
        return self._stream_loader("val", False) if self.streaming else super().val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self._stream_loader("test", False) if self.streaming else super().test_dataloader()
