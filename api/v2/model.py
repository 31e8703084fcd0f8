"""A nestdnn model as the Open Inference Protocol sees it: versions are its descendants, one
input (frames, as /v1 takes them) and three outputs.

Input ``input``: UINT8 pixels (N, H, W, C) or one (H, W, C) / (H, W) image, as the metadata
says (what a camera gives; converted, resized and normalised by the daemon), or FP32 (also
FP16/FP64) normalised model input of shape (N, C, H, W) or one (C, H, W) frame; each row goes
through /v1's conversion rules (`api.frames.from_array`). Pixels are what the metadata
advertises because any bytes are valid pixels: clients that make up data from the metadata
(perf_analyzer's random inputs) send usable frames, where random FP32 bits are refused as
NaN or beyond +-10,000. Outputs: ``probabilities`` (FP32 [N,
classes]), ``label`` (INT64 [N, 1], the top class) and ``class_name`` (BYTES [N, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from api.frames import FrameSpec, from_array
from api.v2.codec import Output, Tensor
from api.v2.errors import BadInferRequest, UnknownVersion
from api.v2.schemas import ConfigTensor, MetadataTensor, ModelConfig, ModelMetadata
from scheduler.daemon import CatalogueEntry, Prediction

INPUT = "input"
PROBABILITIES, LABEL, CLASS_NAME = "probabilities", "label", "class_name"
INPUT_DATATYPES = ("FP32", "FP16", "FP64", "UINT8")
PLATFORM = "nestdnn"
MAX_ROWS = 64
"""Rows (frames) in one request; the request's body limit applies too."""


def versions(entry: CatalogueEntry) -> list[str]:
    """The model's versions: its descendant indices, smallest first."""
    return [str(k) for k in range(entry.num_descendants)]


def descendant_of(entry: CatalogueEntry, version: str) -> int:
    """The descendant a version names, or `UnknownVersion` (404)."""
    if version not in versions(entry):
        raise UnknownVersion(
            f"model {entry.name!r} has no version {version[:64]!r}: its versions are its"
            f" descendants 0 to {entry.num_descendants - 1}"
        )
    return int(version)


def _tensors(entry: CatalogueEntry) -> tuple[list[MetadataTensor], list[MetadataTensor]]:
    channels, height, width = entry.input_shape
    inputs = [MetadataTensor(name=INPUT, datatype="UINT8", shape=[-1, height, width, channels])]
    outputs = [
        MetadataTensor(name=PROBABILITIES, datatype="FP32",
                       shape=[-1, len(entry.class_names)]),
        MetadataTensor(name=LABEL, datatype="INT64", shape=[-1, 1]),
        MetadataTensor(name=CLASS_NAME, datatype="BYTES", shape=[-1, 1]),
    ]
    return inputs, outputs


def metadata(entry: CatalogueEntry) -> ModelMetadata:
    """The protocol's model metadata."""
    inputs, outputs = _tensors(entry)
    return ModelMetadata(name=entry.name, versions=versions(entry), platform=PLATFORM,
                         inputs=inputs, outputs=outputs)


def config(entry: CatalogueEntry, backend: str) -> ModelConfig:
    """Triton's model configuration of the model (dims without the batch dimension)."""
    inputs, outputs = _tensors(entry)
    return ModelConfig(
        name=entry.name,
        platform=PLATFORM,
        backend=backend,
        max_batch_size=MAX_ROWS,
        input=[_config_tensor(t) for t in inputs],
        output=[_config_tensor(t) for t in outputs],
    )


def _config_tensor(tensor: MetadataTensor) -> ConfigTensor:
    kind = "STRING" if tensor.datatype == "BYTES" else tensor.datatype
    return ConfigTensor(name=tensor.name, data_type=f"TYPE_{kind}", dims=tensor.shape[1:])


def frames(tensors: list[Tensor], spec: FrameSpec) -> list[np.ndarray]:
    """The (C, H, W) float32 frames of the request's one input, row by row."""
    if len(tensors) != 1 or tensors[0].name != INPUT:
        names = ", ".join(repr(t.name) for t in tensors)
        raise BadInferRequest(f"the model takes one input named {INPUT!r}, got {names}")
    array = tensors[0].array
    if array.ndim not in (2, 3, 4):
        raise BadInferRequest(
            f"input shape {list(array.shape)}: send (N, C, H, W) or (C, H, W) = "
            f"{list(spec.shape)} as FP32, or (N, H, W, C) / (H, W, C) pixels as UINT8"
        )
    rows = list(array) if array.ndim == 4 else [array]
    if not 1 <= len(rows) <= MAX_ROWS:
        raise BadInferRequest(f"{len(rows)} rows: a request takes 1 to {MAX_ROWS}")
    return [from_array(row, spec) for row in rows]


@dataclass(frozen=True)
class Wanted:
    """The outputs a request asked for (all when it named none) and which go binary."""

    names: tuple[str, ...]
    binary: frozenset[str]


OUTPUTS = (PROBABILITIES, LABEL, CLASS_NAME)


def outputs(predictions: list[Prediction], entry: CatalogueEntry, wanted: Wanted
            ) -> list[Output]:
    """The asked-for outputs of the rows' predictions."""
    rows = len(predictions)
    names = entry.class_names
    labels = [p.label for p in predictions]
    made = {
        PROBABILITIES: lambda: Output(
            PROBABILITIES, "FP32", [rows, len(names)],
            np.asarray([p.probabilities for p in predictions], dtype=np.float32),
            PROBABILITIES in wanted.binary),
        LABEL: lambda: Output(LABEL, "INT64", [rows, 1], np.asarray(labels, dtype=np.int64),
                              LABEL in wanted.binary),
        CLASS_NAME: lambda: Output(
            CLASS_NAME, "BYTES", [rows, 1],
            [names[k] if 0 <= k < len(names) else str(k) for k in labels],
            CLASS_NAME in wanted.binary),
    }
    return [made[name]() for name in wanted.names]
