"""onnxruntime on sessions built from the `.nest` alone: the daemon's default backend.

Each descendant runs as its own session: its weightless graph (built once per version of the
file and cached beside it, `profiles.onnxrt`) plus its weights, read from the open `.nest`
and with batch norms folded, copied into the session at creation. Measured here at batch 1 on
one thread, onnxruntime runs the descendants of VGG-16 x0.25, ResNet-20 x0.5 and VGG-11 x0.25
at or below the one-thread sgemm rate, about 5x faster than torch eager
(`benchmarks/backends.py`), and the daemon needs no torch for it. A session cannot change
descendant in place: a switch loads the target's session (docs/runtime.md).
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np

from profiles.latency import Runner
from profiles.onnxrt import descendant_graphs, graph_cache, load_session, logits
from profiles.reference import onnxruntime_reference_runner
from scheduler.daemon.backends.base import InferenceBackend, LoadedModel
from scheduler.daemon.catalogue import CatalogueEntry

log = logging.getLogger(__name__)


class OrtModel(LoadedModel):
    """A descendant's onnxruntime session."""

    def __init__(self, descendant: int, session: object) -> None:
        self._descendant = descendant
        self._session = session

    @property
    def descendant(self) -> int:
        return self._descendant

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return logits(self._session, batch)


class OrtBackend(InferenceBackend):
    """onnxruntime (CPU, every graph optimisation, one session per loaded descendant)."""

    name = "onnxruntime"

    def __init__(self, threads: int = 1) -> None:
        super().__init__()
        self._threads = threads
        self._graphs: dict[str, list[bytes]] = {}

    def prepare(self, entries: list[CatalogueEntry]) -> None:
        """Have every descendant's graph (from the cache, or built now with a progress line)."""
        for entry in entries:
            cache = graph_cache(entry.nest)
            missing = [k for k in range(entry.num_descendants) if cache.get(k) is None]
            if missing:
                _progress(f"{entry.name}: building {len(missing)} onnxruntime graphs")
            started = time.perf_counter()
            self._graphs[entry.name] = descendant_graphs(entry.nest, range(entry.num_descendants))
            if missing:
                report = graph_cache(entry.nest).report()
                _progress(f"{entry.name}: {report.files} graphs ({report.bytes:,} bytes on disk)"
                          f" ready in {time.perf_counter() - started:.2f} s")

    def reference_runner(self) -> Runner:
        return onnxruntime_reference_runner(self._threads)

    def open(self, entry: CatalogueEntry, descendant: int) -> LoadedModel:
        session = load_session(entry.nest, self._graphs[entry.name][descendant], descendant,
                               self._threads)
        return OrtModel(descendant, session)


def _progress(line: str) -> None:
    """A start-up progress line: logged, and on stderr when that is a terminal."""
    log.info(line)
    if sys.stderr.isatty():
        print(f"nestdnn: {line}", file=sys.stderr)
