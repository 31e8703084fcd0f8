"""Pydantic bodies of the Open Inference Protocol (KServe v2) routes, with the protocol's field
names (no logic beyond field checks). Tensor ``data`` is left as parsed: it is checked and
converted by `api.v2.codec`, with numpy, not element by element here."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Parameter = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[str, Parameter]
Dimension = Annotated[int, Field(ge=0, le=1 << 31)]
MAX_DIMENSIONS = 8


class _Strict(BaseModel):
    """Request bodies refuse unknown fields and NaN or infinite numbers, as /v1's do."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Live(BaseModel):
    """``GET /v2/health/live``."""

    live: bool


class Ready(BaseModel):
    """``GET /v2/health/ready``."""

    ready: bool


class ModelReady(BaseModel):
    """``GET /v2/models/{model}[/versions/{version}]/ready`` (200 only when ready)."""

    name: str
    ready: bool


class ServerMetadata(BaseModel):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class MetadataTensor(BaseModel):
    """An input or output of a model: -1 stands for the batch dimension."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """``GET /v2/models/{model}[/versions/{version}]``: versions are descendant indices."""

    name: str
    versions: list[str] = Field(description="Descendant indices, smallest (0) first.")
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ConfigTensor(BaseModel):
    """A tensor of Triton's model configuration (dims without the batch dimension)."""

    name: str
    data_type: str
    dims: list[int]


class ModelConfig(BaseModel):
    """``GET /v2/models/{model}[/versions/{version}]/config``: the part of Triton's model
    configuration that clients such as perf_analyzer read."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[ConfigTensor]
    output: list[ConfigTensor]


class InferInput(_Strict):
    """One input tensor: ``data`` (row-major, flat or nested) or, with the binary extension,
    ``parameters.binary_data_size`` bytes of the body after the JSON header."""

    name: str = Field(max_length=256)
    shape: list[Dimension] = Field(max_length=MAX_DIMENSIONS)
    datatype: str = Field(max_length=16)
    parameters: Parameters | None = None
    data: Any = None


class RequestedOutput(_Strict):
    """An output the request wants (``parameters.binary_data``: in the binary part)."""

    name: str = Field(max_length=256)
    parameters: Parameters | None = None


class InferRequest(_Strict):
    """``POST /v2/models/{model}[/versions/{version}]/infer`` (the JSON header)."""

    id: str | None = Field(default=None, max_length=256)
    parameters: Parameters | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=16)
    outputs: list[RequestedOutput] | None = Field(default=None, max_length=16)


class OutputTensor(BaseModel):
    """One output tensor: ``data``, or ``parameters.binary_data_size`` bytes of the binary
    part (in the order of the outputs)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    """The inference answer: ``model_version`` is the descendant that ran the rows."""

    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[OutputTensor]


class Error(BaseModel):
    """Every error answer on /v2 (the protocol's shape)."""

    error: str


class Duration(BaseModel):
    """A count and its total nanoseconds (Triton's statistics)."""

    count: int
    ns: int


class InferStats(BaseModel):
    """Per version: successful and failed requests, time queued and computing."""

    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class ModelStat(BaseModel):
    """One version's statistics since the daemon started."""

    name: str
    version: str
    last_inference: int = Field(description="Milliseconds since the epoch, 0 if none.")
    inference_count: int = Field(description="Frames (rows) inferred.")
    execution_count: int = Field(description="Backend calls (batches) that ran them.")
    inference_stats: InferStats
    batch_stats: list[dict[str, Any]]


class ModelStats(BaseModel):
    """``GET /v2/models[/{model}[/versions/{version}]]/stats`` (Triton's statistics)."""

    model_stats: list[ModelStat]
