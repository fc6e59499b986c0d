"""What the devices can do: moving small host tensors to an accelerator without waiting for the work
queued on it; whether the CPU computes in bfloat16 natively."""

from __future__ import annotations

import contextlib
import os

import torch


def to_device_without_sync(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor.to(device)`` for a CPU tensor, without making the host wait for queued GPU work.

    A plain copy from pageable host memory to a CUDA device blocks the host until every kernel
    already queued has finished, which in a per-step path (batch indices, tokens) takes away the
    CPU/GPU overlap. Staged in pinned memory, the copy is queued like a kernel; PyTorch's caching
    host allocator keeps the pinned buffer alive until the copy is done. Other devices: ``.to``.
    """
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX, as oneDNN sees it).
    Without it (e.g. AVX2-only x86), bf16 autocast emulates them, some 50x slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


NVML_CUDA_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


@contextlib.contextmanager
def cuda_checks_from_the_runtime():
    """``torch.cuda.is_available()`` from the CUDA runtime's cached device count while inside.

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` when imported, so that its own checks cannot
    poison a later fork (``ddp_fork``). Every ``is_available()`` then loads NVML and counts devices
    (~140 us on the 2-core CPU), and Adam/AdamW's ``step`` asks on every step. A process that is
    already training alone will not fork a CUDA process any more, so there the cached count is safe.
    """
    saved = os.environ.pop(NVML_CUDA_CHECK, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[NVML_CUDA_CHECK] = saved
