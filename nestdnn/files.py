"""Durable file writes: every file nestdnn writes goes through `atomic_write`.

The data goes to a temporary file in the target's directory, which is flushed and fsync'ed,
renamed over the target, and then the directory itself is fsync'ed, so that after a crash
the path holds either the complete old file or the complete new one, and the rename is on
disk once the call returns. A failed write leaves the old file untouched and no temporary
file behind. Imports nothing heavy: the daemon writes its state and tokens with it too.

What must survive a damaged file (the daemon's registered apps and token hashes) is written
twice, each copy atomically (`write_with_backup`), and read back from whichever copy parses
(`read_with_backup`), which also repairs the other; when neither parses, reading stops with
an error and leaves both in place (never an empty start that would overwrite them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from nestdnn.errors import NestError

log = logging.getLogger(__name__)

Writer = Callable[[BinaryIO], object]
T = TypeVar("T")


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


def backup_of(path: Path) -> Path:
    """The second copy `write_with_backup` keeps of ``path``."""
    return path.with_name(f"{path.name}.backup")


def write_with_backup(path: Path, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write ``path`` and then its backup copy, each atomically: at every moment, and after a
    crash at any point, at least one of the two holds a complete version (the newest, or the
    one before), so one damaged copy loses nothing."""
    atomic_write(path, data, mode=mode)
    atomic_write(backup_of(path), data, mode=mode)
    return path


def read_with_backup(path: Path, parse: Callable[[bytes], T], what: str, *,
                     if_removed: str, mode: int = 0o644) -> T | None:
    """The parsed content of ``path``, or of its backup when ``path`` is missing or does not
    parse (the damaged file is moved aside as ``NAME.corrupt-<time>``, the good copy restored in
    its place with ``mode``, and a warning logged); a backup that is missing or differs from a
    good ``path`` is rewritten from it. None when neither copy exists.

    When no copy parses, a NestError in one line and both files stay where they are: nothing
    is emptied, and the next attempt finds them again. The message tells the operator to
    restore one, or to remove both and start ``if_removed`` (e.g. "with no apps").
    """
    backup = backup_of(path)
    problems, damaged = [], []
    for candidate in (path, backup):
        try:
            raw = candidate.read_bytes()
            value = parse(raw)
        except FileNotFoundError:
            continue
        except Exception as e:  # a parser's own error types: the file is damaged
            problems.append(f"{candidate.name}: {' '.join(str(e).split())[:200]}")
            damaged.append(candidate)
            continue
        for bad in damaged:
            move_aside(bad)
        if candidate == path:
            _refresh_backup(path, raw, parse, what, mode)
        else:
            log.warning("%s %s was damaged or missing (%s); restored it from %s", what, path,
                        "; ".join(problems) or "missing", backup.name)
            write_with_backup(path, raw, mode=mode)
        return value
    if problems:
        copies = "its only copy is" if len(problems) == 1 else "both copies are"
        raise NestError(f"{what} {path}: {copies} damaged ({'; '.join(problems)}); restore a"
                        f" good copy, or remove {path.name}* to start {if_removed}")
    return None


def _refresh_backup(path: Path, raw: bytes, parse: Callable[[bytes], object], what: str,
                    mode: int) -> None:
    """Make the backup a copy of the good ``path`` again (it may be missing, damaged, or one
    write behind after a crash between the two writes)."""
    backup = backup_of(path)
    try:
        current = backup.read_bytes()
    except FileNotFoundError:
        current = None
    if current == raw:
        return
    if current is not None:
        try:
            parse(current)
        except Exception as e:  # damaged: keep it aside before replacing it
            log.warning("%s backup %s was damaged (%s); rewritten from %s", what, backup.name,
                        " ".join(str(e).split())[:200], path.name)
            move_aside(backup)
    atomic_write(backup, raw, mode=mode)


def move_aside(path: Path) -> Path:
    """Rename a damaged file to ``NAME.corrupt-<time>`` (never overwriting an earlier one)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    copy = 1
    while aside.exists():
        copy += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{copy}")
    os.replace(path, aside)
    log.warning("moved the damaged %s to %s", path, aside.name)
    return aside
