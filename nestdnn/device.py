"""Where the training stages compute (`--device`) and in which precision (`--amp`).

Everything that trains or evaluates takes a ``torch.device`` chosen here and moves models and
batches with ``.to(device)``; no code path names a device type, so a path that cannot run on
this machine (CUDA, MPS) is the same code as the one that does.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager
from typing import Literal

import torch

from nestdnn.errors import NestError

log = logging.getLogger(__name__)

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N|mps"
AMP_MODES = ("bf16", "fp16", "off")
Amp = Literal["bf16", "fp16", "off"]
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """The device ``spec`` names: ``auto`` picks CUDA, then MPS, then the CPU.

    ``cuda`` (or ``auto`` finding CUDA) in a process started by torchrun is the GPU of its
    local rank. A device this machine does not have is a NestError.
    """
    text = spec.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return _cuda(None)
        return torch.device("mps" if _mps_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise NestError("--device mps: MPS (Apple GPU) is not available on this machine")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        index = text.partition(":")[2]
        if index and not index.isdigit():
            raise NestError(f"--device {spec}: expected cuda:N with N a GPU number")
        return _cuda(int(index) if index else None)
    raise NestError(f"--device {spec}: unknown device; choose one of {DEVICE_CHOICES}")


def _cuda(index: int | None) -> torch.device:
    if not torch.cuda.is_available():
        build = "this torch has no CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise NestError(f"--device cuda: CUDA is not available on this machine ({build})")
    count = torch.cuda.device_count()
    if index is None:
        index = int(os.environ.get("LOCAL_RANK", "0"))  # torchrun: one GPU per local rank
    if index >= count:
        raise NestError(f"--device cuda:{index}: this machine has {count} GPU(s)")
    return torch.device("cuda", index)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def describe_choice(device: torch.device, spec: str) -> str:
    """The first log line of a stage: the device and why it was chosen."""
    if device.type == "cuda":
        what = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        what = str(device)
    if spec.strip().lower() != "auto":
        return f"device: {what}"
    why = {"cuda": "CUDA found", "mps": "no CUDA, MPS found", "cpu": "no CUDA or MPS"}
    return f"device: {what} (auto: {why.get(device.type, 'picked')})"


def resolve_amp(amp: str | None, device: torch.device) -> Amp:
    """The mixed precision to train with: ``None`` means bf16 on a CUDA device that supports
    it, fp16 (with a gradient scaler) on an older one, and off on the CPU and MPS."""
    if amp is None:
        if device.type != "cuda":
            return "off"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp not in AMP_MODES:
        raise NestError(f"--amp {amp}: choose one of {', '.join(AMP_MODES)}")
    return amp  # type: ignore[return-value]


def autocast(device: torch.device, amp: Amp) -> AbstractContextManager[object]:
    """The forward pass's autocast context (disabled when ``amp`` is off)."""
    dtype = AMP_DTYPES.get(amp, torch.float32)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp != "off")


def grad_scaler(device: torch.device, amp: Amp) -> torch.amp.GradScaler:
    """A loss scaler, active only for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
