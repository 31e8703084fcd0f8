"""``GET /v2``: the server's name, version and protocol extensions."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter

from api.v2.schemas import ServerMetadata

router = APIRouter(prefix="/v2", tags=["v2"])
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
"""Triton's names of the protocol extensions served: binary tensors in the body, the model
configuration (``/config``) and per-version statistics (``/stats``)."""


def _version() -> str:
    try:
        return version("nestdnn")
    except PackageNotFoundError:
        return "unknown"


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    """The server metadata."""
    return ServerMetadata(name="nestdnn", version=_version(), extensions=EXTENSIONS)
