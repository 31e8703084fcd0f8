"""Export descendants of a `.nest` file as standalone models: pt, ONNX, TFLite, safetensors.

- ``pt``: a nestdnn checkpoint (``{"config", "state_dict", "meta"}``), read back with
  ``nestdnn.checkpoint.load_checkpoint`` (``torch.load(weights_only=True)``).
- ``onnx``: ``torch.onnx.export`` with the TorchScript exporter (the dynamo exporter needs
  onnxscript, which nestdnn does not depend on), opset 17, input ``input`` (N, C, H, W) with a
  dynamic batch, output ``logits``.
- ``tflite``: ``litert_torch.convert(model.eval(), (sample,))`` on a (1, C, H, W) sample; the
  flatbuffer keeps PyTorch's NCHW input layout. litert-torch is the optional extra ``export``.
- ``safetensors``: the state_dict with the config in the metadata (``save_standalone``), the
  cheapest independent file to load (``load_standalone``) and never unpickled.

Every file is written to a temporary name next to the target and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from nestdnn.checkpoint import load_state_dict_checked, save_checkpoint
from nestdnn.errors import NestError
from nestdnn.files import atomic_write
from nestdnn.models import ModelConfig, NestNet, build_from_config
from nestdnn.nested import NestedModel
from nestdnn.nestfile import Manifest

log = logging.getLogger(__name__)

SUFFIXES: dict[str, str] = {
    "tflite": ".tflite",
    "onnx": ".onnx",
    "pt": ".pt",
    "safetensors": ".safetensors",
}
EXPORT_FORMATS: tuple[str, ...] = tuple(SUFFIXES)
ONNX_OPSET = 17
TFLITE_EXTRA_MESSAGE = "TFLite export needs the optional extra: pip install 'nestdnn[export]'"
STANDALONE_KEY = "nestdnn-standalone"

Exporter = Callable[[NestNet, Path, dict[str, Any]], None]


def export_descendant(path: str | Path, k: int, fmt: str, out: str | Path) -> Path:
    """Write descendant ``k`` of the `.nest` file ``path`` to ``out`` in format ``fmt``."""
    exporter = _exporter(fmt)
    with NestedModel.open(path, k) as handle:
        return _export(exporter, handle, Path(out))


def export_all(path: str | Path, fmt: str, out_dir: str | Path) -> list[Path]:
    """Write every descendant to ``out_dir`` as ``{stem}.d{k}{suffix}``; return the paths."""
    exporter, path, out_dir = _exporter(fmt), Path(path), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NestError(f"--all writes one file per descendant: {out_dir} must be a directory")
    written = []
    with NestedModel.open(path, 0) as handle:
        for k in range(handle.manifest.num_descendants):
            handle.switch(k)
            written.append(_export(exporter, handle, export_path(out_dir, path, k, fmt)))
    return written


def export_path(out_dir: Path, nest_path: Path, k: int, fmt: str) -> Path:
    """Where ``export_all`` puts descendant ``k``."""
    return out_dir / f"{nest_path.stem}.d{k}{SUFFIXES[fmt]}"


def _exporter(fmt: str) -> Exporter:
    if fmt not in EXPORTERS:
        raise NestError(f"unknown export format '{fmt}'; choose one of {', '.join(SUFFIXES)}")
    return EXPORTERS[fmt]


def _export(exporter: Exporter, handle: NestedModel, out: Path) -> Path:
    """Run ``exporter`` on the handle's current descendant, writing ``out`` atomically."""
    if out.is_dir():
        raise NestError(f"the export target {out} is a directory; give a file path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        exporter(handle.module, tmp, descendant_meta(handle.path, handle.manifest, handle.level))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("exported descendant %d of %s to %s", handle.level, handle.path, out)
    return out


def descendant_meta(path: Path, manifest: Manifest, k: int) -> dict[str, Any]:
    """What an exported descendant records about where it came from and how to feed it."""
    info = manifest.descendants[k]
    return {
        "source": str(path),
        "descendant": k,
        "val_accuracy": info.val_accuracy,
        "roadmap_step": info.roadmap_step,
        "dataset": manifest.dataset,
        "class_names": list(manifest.class_names),
        "normalization": manifest.normalization.model_dump(),
    }


def sample_input(config: ModelConfig) -> torch.Tensor:
    """A (1, C, H, W) zero input, the example traced by the ONNX and TFLite exporters."""
    return torch.zeros(1, config.in_channels, config.input_size, config.input_size)


# ------------------------------------------------------------------------------ exporters


def _export_pt(model: NestNet, out: Path, meta: dict[str, Any]) -> None:
    save_checkpoint(out, model, **meta)


def _export_onnx(model: NestNet, out: Path, meta: dict[str, Any]) -> None:
    torch.onnx.export(
        model.eval(),
        (sample_input(model.config),),
        str(out),
        dynamo=False,
        opset_version=ONNX_OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def _export_tflite(model: NestNet, out: Path, meta: dict[str, Any]) -> None:
    try:
        import litert_torch
    except ImportError as e:
        raise NestError(TFLITE_EXTRA_MESSAGE) from e
    converted = litert_torch.convert(model.eval(), (sample_input(model.config),))
    converted.export(str(out))


def _export_safetensors(model: NestNet, out: Path, meta: dict[str, Any]) -> None:
    save_standalone(model, out, **meta)


EXPORTERS: dict[str, Exporter] = {
    "tflite": _export_tflite,
    "onnx": _export_onnx,
    "pt": _export_pt,
    "safetensors": _export_safetensors,
}


# ----------------------------------------------------------------- standalone safetensors


def save_standalone(model: NestNet, path: str | Path, **meta: Any) -> Path:
    """Write one dense model as safetensors: its state_dict, its config and ``meta`` as JSON."""
    header = {"config": model.config.to_dict(), "meta": meta}
    try:
        text = json.dumps(header)
    except (TypeError, ValueError) as e:
        raise NestError(f"standalone metadata must be JSON-serialisable: {e}") from e
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata={STANDALONE_KEY: text})
    return atomic_write(path, data)


def load_standalone(path: str | Path) -> tuple[NestNet, dict[str, Any]]:
    """Rebuild a model written by ``save_standalone`` (eval mode) and return it with its meta."""
    path = Path(path)
    if not path.is_file():
        raise NestError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            names = f.keys()
            state = {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError) as e:
        raise NestError(f"{path}: file is truncated or not a safetensors file ({e})") from e
    if STANDALONE_KEY not in metadata:
        raise NestError(f"{path}: no '{STANDALONE_KEY}' header (not a standalone nestdnn model)")
    try:
        header = json.loads(metadata[STANDALONE_KEY])
        model = build_from_config(header["config"])
        meta = header["meta"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise NestError(f"{path}: invalid '{STANDALONE_KEY}' header ({e!r})") from e
    except NestError as e:
        raise NestError(f"{path}: invalid model config: {e}") from e
    if not isinstance(meta, dict):
        raise NestError(f"{path}: invalid '{STANDALONE_KEY}' header (meta is not an object)")
    expected = model.state_dict()
    for name, tensor in state.items():
        if name in expected and tensor.dtype != expected[name].dtype:
            raise NestError(
                f"{path}: tensor '{name}' is {tensor.dtype}, expected {expected[name].dtype}"
            )
    load_state_dict_checked(model, state, path)
    return model.eval(), meta
