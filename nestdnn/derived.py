"""Files derived from a `.nest` for one backend, cached beside it and keyed by its content.

The `.nest` is the one source of weights; a backend may derive per-descendant files from it
(onnxruntime: weightless graphs; tflite: flatbuffers). They live in
``NAME.nest.<kind>/<sha256[:16]>/`` with an ``index.json`` that records the `.nest`'s full
hash and, per file, its size, its own sha256 and how long it took to build. A file is served
only if the index vouches for it: one that is missing, truncated, edited or listed for another
`.nest` is rebuilt (never served), and caches of other versions of the file are removed.
Where the directory cannot be written (a read-only models directory on a device), built
files are kept in memory for the process and a warning says so.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from nestdnn.files import atomic_write

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str
    bytes: int
    build_s: float


class _Index(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nest_sha256: str
    kind: str
    files: dict[str, _Entry] = {}


@dataclass(frozen=True)
class CacheReport:
    """What a cache holds: its directory, files, bytes on disk and the time they took."""

    directory: str
    files: int
    bytes: int
    build_s: float
    built_now: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class DerivedCache:
    """Per-descendant files of ``kind`` derived from one version of a `.nest` file."""

    def __init__(self, nest_path: Path, sha256: str, kind: str, suffix: str) -> None:
        self.nest_path = Path(nest_path)
        self.sha256 = sha256
        self.kind = kind
        self.suffix = suffix
        self.directory = self.nest_path.with_name(f"{self.nest_path.name}.{kind}") / sha256[:16]
        self._index = self._read_index()
        self._memory: dict[str, bytes] = {}
        self._built_now = 0

    def file_name(self, k: int) -> str:
        return f"d{k}{self.suffix}"

    def get(self, k: int) -> bytes | None:
        """Descendant ``k``'s file if the index vouches for its content, else None."""
        name = self.file_name(k)
        if name in self._memory:
            return self._memory[name]
        entry = self._index.files.get(name)
        if entry is None:
            return None
        try:
            data = (self.directory / name).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            log.warning("%s: %s does not match its index (corrupt or edited); rebuilding it",
                        self.directory, name)
            return None
        return data

    def path(self, k: int) -> Path:
        """Where descendant ``k``'s file lives (for runtimes that open files by path)."""
        return self.directory / self.file_name(k)

    def get_or_build(self, k: int, build: Callable[[int], bytes]) -> bytes:
        """The cached file of descendant ``k``, built (and recorded) first if needed."""
        data = self.get(k)
        if data is None:
            started = time.perf_counter()
            data = build(k)
            self.put(k, data, time.perf_counter() - started)
        return data

    def put(self, k: int, data: bytes, build_s: float) -> None:
        """Record a freshly built file (atomically; in memory if the directory is read-only)."""
        name = self.file_name(k)
        entry = _Entry(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), build_s=build_s)
        self._built_now += 1
        try:
            atomic_write(self.directory / name, data)
            self._index.files[name] = entry
            atomic_write(self.directory / INDEX_FILE, self._index.model_dump_json(indent=1))
        except OSError as e:
            log.warning("cannot write the %s cache of %s (%s); keeping it in memory",
                        self.kind, self.nest_path.name, e.strerror or e)
            self._memory[name] = data
            return
        self._remove_other_versions()

    def report(self) -> CacheReport:
        files = self._index.files.values()
        return CacheReport(str(self.directory), len(files), sum(f.bytes for f in files),
                           round(sum(f.build_s for f in files), 4), self._built_now)

    def _read_index(self) -> _Index:
        fresh = _Index(nest_sha256=self.sha256, kind=self.kind)
        try:
            index = _Index.model_validate_json((self.directory / INDEX_FILE).read_bytes())
        except FileNotFoundError:
            return fresh
        except (OSError, ValidationError, ValueError) as e:
            log.warning("%s: unreadable cache index (%s); rebuilding", self.directory, e)
            return fresh
        if index.nest_sha256 != self.sha256 or index.kind != self.kind:
            log.warning("%s was built for another file; rebuilding", self.directory)
            return fresh
        return index

    def _remove_other_versions(self) -> None:
        for sibling in self.directory.parent.iterdir():
            if sibling.is_dir() and sibling != self.directory:
                log.info("removing the stale %s cache %s", self.kind, sibling)
                shutil.rmtree(sibling, ignore_errors=True)

