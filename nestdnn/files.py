"""Durable file writes: every file nestdnn writes goes through `atomic_write`.

The data goes to a temporary file in the target's directory, which is flushed and fsync'ed,
renamed over the target, and then the directory itself is fsync'ed, so that after a crash
the path holds either the complete old file or the complete new one, and the rename is on
disk once the call returns. A failed write leaves the old file untouched and no temporary
file behind. Imports nothing heavy: the daemon writes its state and tokens with it too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from nestdnn.errors import NestError

Writer = Callable[[BinaryIO], object]


def atomic_write(path: str | Path, data: bytes | str | Writer, *, mode: int = 0o644) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a callable given the open file) to ``path``.

    ``mode`` applies from the file's creation (0o600 keeps secrets unreadable by others at
    every moment). Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed the mode given to open
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def fsync_directory(directory: Path) -> None:
    """Make a rename (or a removal) in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks; an unreadable file is a NestError."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as e:
        raise NestError(f"cannot read {path}: {e}") from e
    return digest.hexdigest()
