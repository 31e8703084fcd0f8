"""What the profiler reads off a ``.nest`` file besides its manifest: input shape, content hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

from nestdnn.errors import NestError
from nestdnn.nestfile import Manifest

HASH_CHUNK = 1 << 20


def input_shape(manifest: Manifest) -> tuple[int, int, int]:
    """(C, H, W) of one input image of the model."""
    arch = manifest.arch
    return (arch.in_channels, arch.input_size, arch.input_size)


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise NestError(f"cannot read {path}: {e}") from e
    return digest.hexdigest()
