"""Checkpoint files: a model's config, its weights and JSON-like metadata in one torch file.

Files are written atomically (temporary file + rename) and read only with
``torch.load(..., weights_only=True)``, so loading never runs pickled code.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from nestdnn.errors import NestError
from nestdnn.files import atomic_write
from nestdnn.models import NestNet, build_from_config

CHECKPOINT_KEYS = ("config", "state_dict", "meta")


def save_checkpoint(path: str | Path, model: NestNet, **meta: Any) -> Path:
    """Write `{"config", "state_dict", "meta"}` for `model`; `meta` must be JSON-serialisable."""
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {e}") from e
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"config": model.config.to_dict(), "state_dict": state_dict, "meta": meta}
    return atomic_torch_save(payload, path)


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[NestNet, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint and return it (eval mode, on ``device``) with
    its metadata. A checkpoint loads on any device, wherever it was written."""
    path = Path(path)
    payload = load_torch_file(path, "checkpoint")
    if not isinstance(payload, dict) or any(key not in payload for key in CHECKPOINT_KEYS):
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise NestError(
            f"{path} is not a nestdnn checkpoint: expected keys {', '.join(CHECKPOINT_KEYS)},"
            f" found {found}"
        )
    if not isinstance(payload["meta"], dict) or not isinstance(payload["state_dict"], dict):
        raise NestError(f"{path} is not a nestdnn checkpoint: 'meta'/'state_dict' are not dicts")
    try:
        model = build_from_config(payload["config"])
    except NestError as e:
        raise NestError(f"{path} has an invalid model config: {e}") from e
    load_state_dict_checked(model, payload["state_dict"], path)
    return model.to(device).eval(), payload["meta"]


def load_state_dict_checked(model: torch.nn.Module, state_dict: dict, path: Path) -> None:
    """Load weights strictly, turning key/shape mismatches into a NestError naming the file."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise NestError(
            f"{path}: weights do not match the model config"
            + (f"; missing {', '.join(missing[:3])}" if missing else "")
            + (f"; unexpected {', '.join(unexpected[:3])}" if unexpected else "")
        )
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[key].shape:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)
            raise NestError(
                f"{path}: weight {key} has shape {shape}, the model config needs"
                f" {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state_dict)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_torch_file(path: Path, what: str) -> Any:
    """torch.load onto the CPU (``map_location``: whichever device wrote it) with
    weights_only=True; a missing or unreadable file raises NestError."""
    if not path.is_file():
        raise NestError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    # torch.load signals a bad file with many types (UnpicklingError, RuntimeError, EOFError,
    # KeyError, ...), none of which is a bug here: the file is simply unusable.
    except Exception as e:
        raise NestError(
            f"{path} is not a readable {what} (corrupt, truncated or not a torch weights file):"
            f" {_load_failure_reason(e)}"
        ) from e


def _load_failure_reason(error: Exception) -> str:
    """A short reason for a torch.load failure (never torch's advice to drop weights_only)."""
    if isinstance(error, pickle.UnpicklingError):
        return "its content is not plain tensors and containers (refused by the safe loader)"
    first = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else ""
    if isinstance(error, RuntimeError) and first:
        return first
    return f"{type(error).__name__} while reading it"
