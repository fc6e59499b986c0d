"""``latentbench sample``: images (or clips) from a trained latent diffusion checkpoint.

    latentbench sample checkpoint=<ldm or video_ldm .ckpt or run dir> [output=<dir>] [prompts=[...]] [classes=[...]]
        [sampler=ddim] [steps=50] [guidance_scale=3.0] [seed=0] [per_condition=4] [device=auto] [wandb=auto]
        [trajectory=false] [video_formats=[gif,mp4]] [fps=4]

writes (by default into the run's folder, ``<run>/samples/<time>/``) ``<output>/grid.png`` (one row per class/prompt), one PNG per image and ``samples.json``
(what was asked for, and which file holds which image). With ``wandb=auto`` the grid also goes to
the training run's W&B run when it had one (``wandb=false`` skips it). A video model
(``model=video_ldm``) writes each clip as ``.gif`` and ``.mp4`` (``video_formats``), ``grid.png`` as
frame strips (one clip per row) and ``grid.gif``/``grid.mp4`` of all clips. ``trajectory=true`` also
writes the denoising process: ``denoising.png`` (a row per sample, steps left to right) and
``denoising.gif`` (one frame per sampler step).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from latentbench.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "checkpoint": None,
    "output": None,
    "prompts": None,
    "classes": None,
    "sampler": "ddim",
    "steps": 50,
    "guidance_scale": 3.0,
    "seed": 0,
    "per_condition": 4,
    "device": "auto",
    "wandb": "auto",
    "trajectory": False,
    "video_formats": ["gif", "mp4"],
    "fps": 4,
}

USAGE = __doc__.split("\n\n")[1]


def parse_arguments(args: list[str]) -> dict[str, Any]:
    """``key=value`` arguments (YAML values: ``classes=[1,2]``, ``prompts=['a red circle']``) over DEFAULTS."""
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"sample: argument {arg!r} is not key=value (see latentbench sample --help)")
    try:
        given = OmegaConf.to_container(OmegaConf.from_dotlist(args))
    except Exception as error:
        raise ConfigError(f"sample: cannot parse the arguments ({str(error).splitlines()[0]})") from None
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"sample: unknown argument {unknown[0]!r}{did_you_mean(unknown[0], DEFAULTS)} (allowed: {', '.join(DEFAULTS)})")
    options = {**DEFAULTS, **given}
    if options["checkpoint"] is None:
        raise ConfigError("checkpoint: missing required value (latentbench sample checkpoint=<ldm ckpt or run dir> [output=<dir>])")
    for key in ("prompts", "classes"):
        if options[key] is not None and not isinstance(options[key], list):
            options[key] = [options[key]]
    if options["prompts"] is not None and options["classes"] is not None:
        raise ConfigError("prompts/classes: give one of them (prompts for a text model, classes for a class model)")
    from latentbench.media import VIDEO_FORMATS

    if not isinstance(options["video_formats"], list):
        options["video_formats"] = [options["video_formats"]]
    for name in options["video_formats"]:
        if name not in VIDEO_FORMATS:
            raise ConfigError(f"video_formats: {name!r} is not allowed (allowed: {', '.join(VIDEO_FORMATS)})")
    if not isinstance(options["fps"], int) or isinstance(options["fps"], bool) or options["fps"] < 1:
        raise ConfigError(f"fps: expected a positive integer, got {options['fps']!r}")
    if not isinstance(options["trajectory"], bool):
        raise ConfigError(f"trajectory: expected true or false, got {options['trajectory']!r}")
    return options


def load_model(checkpoint: str, device: str):
    """The LDM (or video LDM: the class the checkpoint records) of a checkpoint file or run directory,
    on ``device`` (auto: CUDA when present), in eval mode."""
    from hydra.utils import get_class

    from latentbench.checkpoints import MODEL_CLASS_KEY, read_checkpoint
    from latentbench.models.ldm import LatentDiffusion
    from latentbench.run_dir import resolve_checkpoint

    path = resolve_checkpoint(str(checkpoint))
    cls = get_class(read_checkpoint(path, "checkpoint", expected=LatentDiffusion)[MODEL_CLASS_KEY])
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = cls.load_from_checkpoint(path, map_location=device, weights_only=True)
    return model.eval(), path


def default_output(checkpoint: str) -> Path:
    """``<run>/samples/<time>/``: the samples of a run's checkpoint go into that run's folder."""
    from datetime import datetime

    from latentbench.run_dir import RunDir, RunDirError

    try:
        run = RunDir.containing(checkpoint)
    except RunDirError:
        raise ConfigError(f"output: {checkpoint} is not inside a run folder; say where the samples go (output=<dir>)") from None
    return run.path / "samples" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def requests_of(model, options: dict[str, Any]) -> list | None:
    """What to sample: the classes/prompts asked for, else the model's configured grid; checked against its conditioning."""
    from latentbench.models.conditioning import ClassConditioning, NoConditioning, TextConditioning

    conditioner = model.conditioner
    if isinstance(conditioner, NoConditioning):
        if options["prompts"] or options["classes"]:
            raise ConfigError("prompts/classes: this model is unconditional (conditioning=none); leave them out")
        return None
    if isinstance(conditioner, ClassConditioning):
        if options["prompts"]:
            raise ConfigError("prompts: this model is class-conditional; give classes=[...] instead")
        return options["classes"] or model.sample_requests()
    if isinstance(conditioner, TextConditioning) and options["classes"]:
        raise ConfigError("classes: this model is text-conditional; give prompts=[...] instead")
    requests = options["prompts"] or model.sample_requests()
    if not requests:
        raise ConfigError("prompts: this text model has no default prompts; give prompts=['a red circle ...', ...]")
    return [str(r) for r in requests]


def image_name(requests: list | None, row: int, column: int, index: int) -> str:
    """``class3_00.png`` (class models), ``prompt01_00.png`` (text; samples.json maps it to its prompt), ``sample_007.png``."""
    if requests is None:
        return f"sample_{index:03d}.png"
    if isinstance(requests[row], int):
        return f"class{requests[row]}_{column:02d}.png"
    return f"prompt{row:02d}_{column:02d}.png"


def save_images(images: torch.Tensor, requests: list | None, per_condition: int, output: Path) -> dict[str, Any]:
    """``grid.png`` + one PNG per image under ``output``; returns the file index for samples.json."""
    from PIL import Image

    from latentbench.callbacks import grid_image

    output.mkdir(parents=True, exist_ok=True)
    per_row = per_condition
    rows = list(images.float().cpu().split(per_row))
    grid = grid_image(rows)
    Image.fromarray(grid).save(output / "grid.png")
    files = []
    for index, image in enumerate(images.float().cpu()):
        row, column = divmod(index, per_row)
        name = image_name(requests, row, column, index)
        pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(output / name)
        files.append({"file": name, "condition": None if requests is None else requests[row], "index": column})
    return {"grid": "grid.png", "images": files, "grid_array": grid}


def save_clips(clips: torch.Tensor, requests: list | None, per_condition: int, output: Path, formats: list[str], fps: int) -> dict[str, Any]:
    """``grid.png`` (frame strips, one clip per row), ``grid.<format>`` (all clips playing) and one
    video per clip (``class3_00.gif``, ...) under ``output``; returns the file index for samples.json."""
    from PIL import Image

    from latentbench.callbacks import clip_grid, clip_video
    from latentbench.media import write_video

    output.mkdir(parents=True, exist_ok=True)
    grid = clip_grid(clips)
    Image.fromarray(grid).save(output / "grid.png")
    everything = clip_video(clips, per_condition)
    for name in formats:
        write_video(output / f"grid.{name}", everything, fps)
    files = []
    for index, clip in enumerate(clips.float().cpu()):
        row, column = divmod(index, per_condition)
        stem = image_name(requests, row, column, index).removesuffix(".png")
        frames = (clip.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        for name in formats:
            write_video(output / f"{stem}.{name}", frames, fps)
        files.append({"file": f"{stem}.{formats[0]}" if formats else None, "files": [f"{stem}.{name}" for name in formats],
                      "condition": None if requests is None else requests[row], "index": column, "frames": len(frames)})
    return {"grid": "grid.png", "videos": [f"grid.{name}" for name in formats], "images": files, "grid_array": grid}


def save_trajectory(trajectory: torch.Tensor, output: Path, fps: int) -> dict[str, Any]:
    """``denoising.png`` and ``denoising.gif`` of a ``(S, N, ...)`` trajectory (see :func:`latentbench.callbacks.trajectory_views`)."""
    from PIL import Image

    from latentbench.callbacks import trajectory_views
    from latentbench.media import write_video

    strip, video = trajectory_views(trajectory)
    Image.fromarray(strip).save(output / "denoising.png")
    write_video(output / "denoising.gif", video, fps)
    return {"denoising": {"strip": "denoising.png", "video": "denoising.gif", "steps": len(trajectory)}}


def log_to_wandb(checkpoint_path: str, grid: np.ndarray, caption: str) -> str | None:
    """Log the grid to the W&B run of the training run that wrote the checkpoint, if it had one."""
    from latentbench.run_dir import RunDir, RunDirError
    from latentbench.tracking import make_wandb_logger

    try:
        run = RunDir.containing(checkpoint_path)
        run_id = run.wandb_run_id()
    except RunDirError:  # a checkpoint outside a run directory (copied alone): nothing to log to
        return None
    if not run_id:
        return None
    logger = make_wandb_logger(str(run.path), run_id=run_id)
    logger.log_image(key="samples/grid", images=[grid], caption=[caption])
    logger.experiment.finish()
    return run_id


def sample(options: dict[str, Any]) -> dict[str, Any]:
    """Load the checkpoint, sample, write the files; returns what ``samples.json`` holds."""
    model, path = load_model(options["checkpoint"], options["device"])
    if options["output"] is None:
        options = {**options, "output": str(default_output(path))}
    requests = requests_of(model, options)
    arguments = {key: options[key] for key in ("per_condition", "sampler", "steps", "guidance_scale", "seed")}
    try:
        if options["trajectory"]:
            images, trajectory = model.sample_trajectory(requests, **arguments)
        else:
            images, trajectory = model.sample(requests, **arguments), None
    except ValueError as error:
        raise ConfigError(str(error)) from None
    output = Path(options["output"])
    if images.dim() == 5:
        saved = save_clips(images, requests, options["per_condition"], output, options["video_formats"], options["fps"])
    else:
        saved = save_images(images, requests, options["per_condition"], output)
    if trajectory is not None:
        saved.update(save_trajectory(trajectory, output, options["fps"]))
    grid = saved.pop("grid_array")
    record = {**{k: v for k, v in options.items() if k not in ("prompts", "classes")}, "checkpoint": path,
              "requests": requests, **saved}
    caption = "rows: " + " | ".join(map(str, requests)) if requests else "unconditional samples"
    if options["wandb"] not in (False, "false", "off"):
        record["wandb_run_id"] = log_to_wandb(path, grid, caption)
    (output / "samples.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def run_sample(args: list[str]) -> int:
    if any(arg in ("-h", "--help") for arg in args):
        print("usage: " + USAGE.strip())
        return 0
    record = sample(parse_arguments(args))
    print(f"wrote {len(record['images'])} samples and {Path(record['output']) / 'grid.png'}")
    return 0
