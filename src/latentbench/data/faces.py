"""Face images: scikit-image's embedded LFW subset, the Olivetti faces, any identity folder, or a hub dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
from datasets import DatasetDict

from latentbench.data.base import ImageDataModule, arrays_to_dataset
from latentbench.data.image_files import Color, image_files, images_to_arrays, open_image
from latentbench.errors import ConfigError

log = logging.getLogger(__name__)

Source = Literal["lfw_subset", "olivetti", "folder", "hub"]
OLIVETTI_PEOPLE, OLIVETTI_PER_PERSON, OLIVETTI_SIDE = 40, 10, 64  # AT&T / ORL: 10 images of each of 40 people
LFW_SUBSET_FACES = 100  # skimage.data.lfw_subset(): the first 100 of its 200 images are faces


class FacesDataModule(ImageDataModule):
    """Faces for autoencoders and denoisers; labels are identities where the source has them.

    Args:
        source (`str`): where the faces come from:
            ``lfw_subset`` (default, offline): the 100 25x25 faces embedded in scikit-image, no identities (label 0);
            ``olivetti``: 400 64x64 faces of 40 people; ``root`` = ``olivettifaces.mat`` (key ``faces``,
            uint8 4096x400, column-major), or null for scikit-learn's online ``fetch_olivetti_faces``;
            ``folder``: ``root`` holds one sub-folder per identity (the label), images in PGM, PNG or JPEG,
            e.g. the ORL layout ``s1/1.pgm``;
            ``hub``: the Hugging Face dataset ``hub_name`` (columns ``image`` and, if present, ``label``).
        root (`str`, *optional*): the file or folder of ``olivetti`` and ``folder``.
        hub_name (`str`, *optional*): dataset name for ``source: hub``.
        image_size (`int`): images are resized to ``image_size x image_size``.
        color (`str`): ``grayscale`` (1 channel) or ``rgb`` (3 channels, grey sources repeated).
        split_by (`str`): ``image`` (test images drawn at random) or ``identity`` (test and validation
            people never seen in training; needs identity labels).
        test_size (`float`): share of the images (or identities) held out for test.
        **kwargs: see :class:`~latentbench.data.base.ImageDataModule`; with ``split_by: identity``
            ``val_size`` counts identities too.
    """

    def __init__(
        self,
        source: Source = "lfw_subset",
        root: str | None = None,
        hub_name: str | None = None,
        image_size: int = 64,
        color: Color = "grayscale",
        split_by: Literal["image", "identity"] = "image",
        test_size: float = 0.2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if source not in ("lfw_subset", "olivetti", "folder", "hub"):
            raise ValueError(f"source: must be lfw_subset, olivetti, folder or hub, got {source!r}")
        if image_size <= 0:
            raise ValueError(f"image_size: must be positive, got {image_size}")
        if color not in ("grayscale", "rgb"):
            raise ValueError(f"color: must be grayscale or rgb, got {color!r}")
        if split_by not in ("image", "identity"):
            raise ValueError(f"split_by: must be image or identity, got {split_by!r}")
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size: must lie in (0, 1), got {test_size}")
        if source == "folder" and not root:
            raise ValueError("root: source 'folder' needs data.root=<folder with one sub-folder per identity>")
        if source == "hub" and not hub_name:
            raise ValueError("hub_name: source 'hub' needs data.hub_name=<Hugging Face dataset>")
        if split_by == "identity" and source == "lfw_subset":
            raise ValueError("split_by: 'identity' needs identity labels, and source lfw_subset has none (use split_by=image)")
        self.source, self.hub_name = source, hub_name
        self.root = Path(root).expanduser() if root else None
        self.image_size, self.color, self.split_by, self.test_size = image_size, color, split_by, test_size
        if source == "folder":
            self.identity_folders = self._check_folder(self.root)
        if source == "olivetti" and self.root is not None and not self.root.is_file():
            raise ConfigError(f"data.root: {self.root} does not exist (expected the Olivetti olivettifaces.mat file)")

    @staticmethod
    def _check_folder(root: Path) -> list[Path]:
        if not root.is_dir():
            raise ConfigError(f"data.root: {root} does not exist or is not a folder (expected one sub-folder of images per identity)")
        folders = sorted((p for p in root.iterdir() if p.is_dir() and image_files(p)), key=lambda p: p.name)
        if not folders:
            loose = " (it has images but no identity sub-folders: put them in e.g. s1/, s2/)" if image_files(root) else ""
            raise ConfigError(
                f"data.root: {root} has no sub-folders with images (expected one sub-folder per identity holding "
                f"PGM/PNG/JPEG files, e.g. s1/1.pgm){loose}"
            )
        return folders

    @property
    def source_image_shape(self) -> tuple[int, int, int]:
        return (1 if self.color == "grayscale" else 3, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int | None:
        if self.source == "olivetti":
            return OLIVETTI_PEOPLE
        if self.source == "folder":
            return len(self.identity_folders)
        return None

    # -- reading each source: uint8 (N, C, S, S) images and int64 (N,) labels -------------------------
    def _read_lfw_subset(self) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image
        from skimage.data import lfw_subset

        faces = (lfw_subset()[:LFW_SUBSET_FACES] * 255).round().astype(np.uint8)
        images = [Image.fromarray(face) for face in faces]
        return images_to_arrays(images, self.color, self.image_size, False, "lfw_subset"), np.zeros(len(images), np.int64)

    def _read_olivetti(self) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image

        faces = self._olivetti_mat(self.root) if self.root is not None else self._olivetti_online()
        labels = np.repeat(np.arange(OLIVETTI_PEOPLE), OLIVETTI_PER_PERSON)
        images = [Image.fromarray(face) for face in faces]
        return images_to_arrays(images, self.color, self.image_size, False, "olivetti"), labels

    @staticmethod
    def _olivetti_mat(path: Path) -> np.ndarray:
        """``(400, 64, 64)`` uint8 faces from the .mat file (4096 x 400, each column a column-major image)."""
        from scipy.io import loadmat

        try:
            content = loadmat(path)
        except Exception as error:  # scipy raises ValueError, OSError, TypeError... for a broken file
            raise ConfigError(f"data.root: {path} is not a readable MATLAB .mat file ({type(error).__name__}: {error})") from None
        faces = content.get("faces")
        expected = (OLIVETTI_SIDE * OLIVETTI_SIDE, OLIVETTI_PEOPLE * OLIVETTI_PER_PERSON)
        if faces is None:
            keys = sorted(k for k in content if not k.startswith("__"))
            raise ConfigError(f"data.root: {path} has no 'faces' array (keys: {keys}); expected uint8 {expected[0]}x{expected[1]}")
        if faces.shape != expected:
            raise ConfigError(f"data.root: {path}: 'faces' has shape {faces.shape}, expected {expected[0]}x{expected[1]} (64x64 images as columns)")
        faces = np.asarray(faces)
        if faces.dtype != np.uint8:
            faces = (255 * (faces - faces.min()) / max(float(faces.max() - faces.min()), 1e-12)).round().astype(np.uint8)
        return faces.T.reshape(-1, OLIVETTI_SIDE, OLIVETTI_SIDE).transpose(0, 2, 1).copy()

    @staticmethod
    def _olivetti_online() -> np.ndarray:
        from sklearn.datasets import fetch_olivetti_faces

        try:
            faces = fetch_olivetti_faces().images  # float32 in [0, 1], (400, 64, 64)
        except Exception as error:  # network errors of any kind
            raise ConfigError(
                f"data.root: null, so the Olivetti faces come from scikit-learn's fetch_olivetti_faces, which failed "
                f"({type(error).__name__}); set data.root=<path to olivettifaces.mat> to read them locally"
            ) from None
        return (faces * 255).round().astype(np.uint8)

    def _read_folder(self) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for label, folder in enumerate(self.identity_folders):
            for path in image_files(folder):
                images.append(open_image(path))
                labels.append(label)
        return images_to_arrays(images, self.color, self.image_size, False, str(self.root)), np.asarray(labels, np.int64)

    def _read_hub(self) -> tuple[np.ndarray, np.ndarray]:
        from datasets import load_dataset

        try:
            hub = load_dataset(self.hub_name, split="train")
        except Exception as error:
            raise ConfigError(
                f"data.hub_name: loading the hub dataset '{self.hub_name}' failed ({type(error).__name__}); "
                f"offline, use data.source=folder or olivetti with data.root=<local path>"
            ) from None
        if "image" not in hub.column_names:
            raise ConfigError(f"data.hub_name: '{self.hub_name}' has no 'image' column (columns: {hub.column_names})")
        labels = np.asarray(hub["label"], np.int64) if "label" in hub.column_names else np.zeros(len(hub), np.int64)
        return images_to_arrays(list(hub["image"]), self.color, self.image_size, False, self.hub_name), labels

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every face of the source: uint8 ``(N, C, image_size, image_size)`` and int64 labels ``(N,)``."""
        reader = {"lfw_subset": self._read_lfw_subset, "olivetti": self._read_olivetti,
                  "folder": self._read_folder, "hub": self._read_hub}[self.source]
        return reader()

    def load_splits(self) -> DatasetDict:
        images, labels = self.read_all()
        if self.split_by == "image":
            full = arrays_to_dataset(images, labels)
            held_out = full.train_test_split(test_size=self.test_size, seed=self.split_seed, shuffle=True)
            return DatasetDict(train=held_out["train"], test=held_out["test"])
        identities = np.unique(labels)
        order = np.random.default_rng(self.split_seed).permutation(identities)
        n_test = max(1, round(self.test_size * len(identities)))
        n_val = self.val_size if isinstance(self.val_size, int) else max(1, round(self.val_size * len(identities)))
        if n_test + n_val >= len(identities):
            raise ConfigError(
                f"data.split_by: identity split leaves no training identities ({len(identities)} identities, "
                f"{n_test} for test, {n_val} for val; lower data.test_size or data.val_size)"
            )
        test_ids, val_ids = set(order[:n_test].tolist()), set(order[n_test : n_test + n_val].tolist())
        parts = {}
        for name, keep in (("test", lambda l: l in test_ids), ("val", lambda l: l in val_ids),
                           ("train", lambda l: l not in test_ids and l not in val_ids)):
            mask = np.array([keep(int(l)) for l in labels])
            parts[name] = arrays_to_dataset(images[mask], labels[mask])
        log.info("faces split by identity: %d train, %d val, %d test people", len(identities) - n_test - n_val, n_val, n_test)
        return DatasetDict(parts)
