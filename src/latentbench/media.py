"""Video files: frames ``(T, H, W, 3)`` uint8 to GIF (Pillow) or MP4 (H.264 through PyAV), both by imageio."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VIDEO_FORMATS = ("gif", "mp4")


def write_video(path: str | Path, frames: np.ndarray, fps: int = 4) -> Path:
    """Write ``frames`` ``(T, H, W, 3)`` (or grey ``(T, H, W)``, ``(T, H, W, 1)``) uint8 as ``path`` (``.gif`` or ``.mp4``).

    A GIF loops forever; an MP4 is H.264 in yuv420p (what every player plays), whose sides must be
    even: odd ones get a black row/column.
    """
    import imageio.v3 as iio

    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim == 4 and frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected (T, H, W, 3) uint8, got {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower().lstrip(".")
    if suffix == "gif":
        iio.imwrite(path, frames, extension=".gif", duration=1000 / fps, loop=0)
    elif suffix == "mp4":
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        iio.imwrite(path, frames, extension=".mp4", plugin="pyav", fps=fps, codec="libx264")
    else:
        raise ValueError(f"{path}: unknown video format (allowed: {', '.join(VIDEO_FORMATS)})")
    return path


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a GIF or MP4 as ``(T, H, W, 3)`` uint8."""
    import imageio.v3 as iio

    path = Path(path)
    frames = iio.imread(path, index=None, **({"plugin": "pyav"} if path.suffix.lower() != ".gif" else {}))
    frames = np.asarray(frames)
    return frames[..., :3] if frames.ndim == 4 else np.repeat(frames[..., None], 3, axis=-1)
