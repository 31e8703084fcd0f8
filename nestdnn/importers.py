"""Users' own models: a torchvision model's fine-tuned weights as a nestdnn checkpoint.

A user fine-tunes ``torchvision.models.resnet18(num_classes=N)`` (or resnet50, vgg16,
mobilenet_v2) on their data and saves its ``state_dict`` (``torch.save`` or safetensors).
`import_torchvision` maps it onto the nestdnn arch whose layer graph is torchvision's model
(same module names, strides and head at the given input size), so that the imported model
computes what torchvision's computes, and `nestdnn prune --model` takes it from there.

Nothing is downloaded. Weights are read without unpickling code (``torch.load`` with
``weights_only=True``, or safetensors). The number of classes comes from the classifier and
the input channels from the stem; every other tensor must have exactly the shape of the named
architecture, else the first key that differs is named.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nestdnn.arch import ModelConfig, full_widths, mobilenet, model_graph, resnet, vgg
from nestdnn.errors import NestError
from nestdnn.files import file_sha256
from nestdnn.models import NestNet, build_from_config

log = logging.getLogger(__name__)

SOURCE_PREFIX = "torchvision:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)
STATE_DICT_KEYS = ("state_dict", "model_state_dict")  # common wrappers of a saved state_dict


@dataclass(frozen=True)
class TorchvisionModel:
    """A torchvision architecture and the nestdnn arch that computes the same function."""

    name: str  # torchvision's builder, e.g. "mobilenet_v2"
    arch: str  # the nestdnn arch
    stem: str  # the first conv's weight: its dim 1 is the input channels
    classifier: str  # the last linear's weight: its dim 0 is the number of classes
    min_input_size: int  # below this the nestdnn arch adapts its strides or pooling
    pooled_linear: str | None = None  # a Linear over a flattened 7x7 pool, held as a conv

    @property
    def source(self) -> str:
        return f"{SOURCE_PREFIX}{self.name}"


TORCHVISION_MODELS: dict[str, TorchvisionModel] = {
    model.name: model
    for model in (
        TorchvisionModel("resnet18", "resnet18", "conv1.weight", "fc.weight",
                         resnet.SMALL_INPUT_LIMIT),
        TorchvisionModel("resnet50", "resnet50", "conv1.weight", "fc.weight",
                         resnet.SMALL_INPUT_LIMIT),
        TorchvisionModel("vgg16", vgg.TV_ARCH, "features.0.weight", "classifier.6.weight",
                         vgg.TV_FLOOR_MODE_FROM, pooled_linear="classifier.0.weight"),
        TorchvisionModel("mobilenet_v2", mobilenet.ARCH, "features.0.0.weight",
                         "classifier.1.weight", mobilenet.SMALL_INPUT_LIMIT),
    )
}


@dataclass(frozen=True)
class Normalization:
    """The per-channel mean and std the model's inputs were normalised with."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def check(self, in_channels: int) -> None:
        if len(self.mean) != in_channels or len(self.std) != in_channels:
            raise NestError(
                f"--mean and --std need {in_channels} values each (one per input channel),"
                f" got {len(self.mean)} and {len(self.std)}"
            )
        if min(self.std) <= 0:
            raise NestError(f"--std values must be positive, got {list(self.std)}")


def parse_source(source: str) -> TorchvisionModel:
    """``torchvision:NAME`` -> its `TorchvisionModel`; anything else is a NestError."""
    name = source.removeprefix(SOURCE_PREFIX)
    if not source.startswith(SOURCE_PREFIX) or name not in TORCHVISION_MODELS:
        choices = ", ".join(m.source for m in TORCHVISION_MODELS.values())
        raise NestError(f"cannot import {source!r}; choose one of {choices}")
    return TORCHVISION_MODELS[name]


def import_torchvision(
    source: str,
    weights: Path,
    *,
    input_size: int = 224,
    normalization: Normalization | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[NestNet, dict[str, Any]]:
    """The model (eval mode) and checkpoint metadata of a torchvision state_dict file."""
    model = parse_source(source)
    normalization = normalization or Normalization()
    state = load_weights(weights)
    config = infer_config(model, state, input_size, weights)
    normalization.check(config.in_channels)
    names = _checked_class_names(class_names, config.num_classes)
    expected = torchvision_layout(model, config)
    check_layout(state, expected, f"{weights} does not match {model.source}")
    net = build_from_config(config)
    net.load_state_dict(to_nestdnn(model, state, config))
    meta: dict[str, Any] = {
        "source": model.source,
        "weights_sha256": file_sha256(weights),
        "mean": list(normalization.mean),
        "std": list(normalization.std),
    }
    if names is not None:
        meta["class_names"] = names
    log.info("imported %s from %s: %s at %dx%d, %d classes", model.source, weights,
             config.arch, input_size, input_size, config.num_classes)
    return net.eval(), meta


# --- reading the file --------------------------------------------------------------------------


def load_weights(path: Path) -> dict[str, Tensor]:
    """A state_dict from ``path`` (safetensors, or a torch file read with weights_only=True).

    A file holding a wrapper dict (``{"state_dict": ...}``) is unwrapped, and a ``module.``
    prefix on every key (DataParallel) is dropped.
    """
    if not path.is_file():
        raise NestError(f"weights file not found: {path}")
    payload = _load_safetensors(path) if path.suffix == ".safetensors" else _load_torch(path)
    return _state_dict_of(payload, path)


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    # safetensors reports a bad header or a truncated file with its own error type (and
    # others for I/O); none is a bug here: the file is unusable
    except Exception as e:
        raise NestError(f"{path} is not a readable safetensors file: {e}") from e


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _refused_a_global(e):
            raise NestError(
                f"{path} is refused: it holds pickled Python objects besides tensors (a whole"
                " model, or code), which could run code when loaded; save the model's"
                " state_dict() instead (torch.save or safetensors)"
            ) from e
        raise NestError(f"{path} is not a readable torch weights file (corrupt or not a"
                        " torch file)") from e
    # torch.load signals an unreadable file with many types (RuntimeError, EOFError, ...)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NestError(f"{path} is not a readable torch weights file: {reason}") from e


def _refused_a_global(error: pickle.UnpicklingError) -> bool:
    """Whether the weights-only unpickler stopped at a global (a function or class to import:
    code, or an object such as a whole model) rather than at bytes it cannot parse."""
    return any("GLOBAL" in str(e) for e in (error, error.__context__) if e is not None)


def _state_dict_of(payload: Any, path: Path) -> dict[str, Tensor]:
    """The str -> tensor dict in a loaded file (unwrapped, ``module.`` prefix dropped)."""
    if isinstance(payload, Mapping):
        wrapped = next((payload[k] for k in STATE_DICT_KEYS
                        if isinstance(payload.get(k), Mapping)), None)
        payload = wrapped if wrapped is not None else payload
    if not isinstance(payload, Mapping) or not payload:
        raise NestError(f"{path} does not hold a state_dict (a dict of tensors)")
    bad = next((k for k, v in payload.items()
                if not isinstance(k, str) or not isinstance(v, Tensor)), None)
    if bad is not None:
        raise NestError(f"{path} does not hold a state_dict: entry {bad!r} is not a tensor")
    if all(k.startswith("module.") for k in payload):
        return {k.removeprefix("module."): v for k, v in payload.items()}
    return dict(payload)


# --- matching torchvision's layout -------------------------------------------------------------


def infer_config(model: TorchvisionModel, state: Mapping[str, Tensor], input_size: int,
                 path: Path) -> ModelConfig:
    """The config at full widths, classes and input channels read from the weights."""
    if input_size < model.min_input_size:
        raise NestError(
            f"{model.source} imports at --input-size {model.min_input_size} or more (below"
            f" that nestdnn's {model.arch} adapts its strides or pooling to small inputs and"
            f" would no longer compute torchvision's function), got {input_size}"
        )
    in_channels = _dim(state, model.stem, 1, 4, path, model)
    num_classes = _dim(state, model.classifier, 0, 2, path, model)
    return ModelConfig(model.arch, in_channels, num_classes, input_size,
                       full_widths(model.arch, input_size))


def _dim(state: Mapping[str, Tensor], key: str, dim: int, ndim: int, path: Path,
         model: TorchvisionModel) -> int:
    """Size ``dim`` of tensor ``key``, which must exist with ``ndim`` dimensions."""
    tensor = state.get(key)
    if tensor is None or tensor.dim() != ndim:
        found = "no such key" if tensor is None else f"shape {tuple(tensor.shape)}"
        raise NestError(
            f"{path} does not match {model.source}: expected {key} with {ndim} dimensions,"
            f" found {found}"
        )
    return int(tensor.shape[dim])


def torchvision_layout(model: TorchvisionModel, config: ModelConfig
                       ) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every key of torchvision's state_dict, in its order, with its shape and dtype."""
    layout = {key: (spec.shape, spec.dtype) for key, spec in model_graph(config).state().items()}
    if model.pooled_linear is not None:
        (out, channels, _k, _k2), dtype = layout[model.pooled_linear]
        layout[model.pooled_linear] = ((out, channels * vgg.TV_POOLED_SIZE ** 2), dtype)
    return layout


def check_layout(state: Mapping[str, Tensor],
                 expected: Mapping[str, tuple[tuple[int, ...], str]], context: str) -> None:
    """The first key missing, misshapen, of the wrong kind or unexpected is a NestError."""
    for key, (shape, dtype) in expected.items():
        if key not in state:
            raise NestError(f"{context}: missing {key} (expected shape {shape})")
        found = state[key]
        if tuple(found.shape) != shape:
            raise NestError(f"{context}: {key} has shape {tuple(found.shape)}, expected {shape}")
        if found.is_floating_point() != (dtype == "float32"):
            raise NestError(f"{context}: {key} has dtype {found.dtype}, expected {dtype}")
    unexpected = next((key for key in state if key not in expected), None)
    if unexpected is not None:
        raise NestError(
            f"{context}: unexpected {unexpected} (shape {tuple(state[unexpected].shape)})"
        )


def to_nestdnn(model: TorchvisionModel, state: Mapping[str, Tensor], config: ModelConfig
               ) -> dict[str, Tensor]:
    """torchvision's tensors as the nestdnn model holds them (float32, pooled linear as conv)."""
    converted = {key: t.float() if t.is_floating_point() else t for key, t in state.items()}
    if model.pooled_linear is not None:
        weight = converted[model.pooled_linear]
        pooled = vgg.TV_POOLED_SIZE
        conv = weight.reshape(weight.shape[0], -1, pooled, pooled)
        converted[model.pooled_linear] = fold_adaptive_pool(
            conv, vgg.tv_feature_size(config.input_size))
    return converted


def fold_adaptive_pool(weight: Tensor, size: int) -> Tensor:
    """A conv weight over a ``size`` x ``size`` map equal to adaptive average pooling of the
    map to the weight's own size followed by the weight (the identity when sizes agree)."""
    pooled = weight.shape[-1]
    if size == pooled:
        return weight.contiguous()
    pool = adaptive_pool_matrix(size, pooled).to(weight.dtype)
    return torch.einsum("ocik,ij,kl->ocjl", weight, pool, pool).contiguous()


def adaptive_pool_matrix(size_in: int, size_out: int) -> Tensor:
    """(size_out, size_in): row i averages torch's adaptive pooling bin i along one axis."""
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _checked_class_names(names: Sequence[str] | None, num_classes: int) -> list[str] | None:
    if names is None:
        return None
    names = [name.strip() for name in names]
    if len(names) != num_classes:
        raise NestError(
            f"{len(names)} class names given; the classifier has {num_classes} classes"
        )
    if any(not name for name in names) or len(set(names)) != len(names):
        raise NestError("class names must be non-empty and distinct")
    return names
