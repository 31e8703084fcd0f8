"""What the model manager needs of an inference backend: load a descendant, run frames."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from profiles.latency import Runner
from profiles.schema import Backend
from scheduler.daemon.catalogue import CatalogueEntry
from scheduler.problem import Descendant


class LoadedModel(ABC):
    """One resident descendant that can run frames."""

    switches_in_place: ClassVar[bool] = False
    """Whether `switch_in_place` works (else a switch frees the old model and loads anew)."""

    @property
    @abstractmethod
    def descendant(self) -> int:
        """Index of the descendant that runs frames now."""

    @abstractmethod
    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's outputs (N, classes) for a (N, C, H, W) float32 batch of frames."""

    def switch_in_place(self, descendant: int) -> None:
        """Become another descendant without reloading (only if `switches_in_place`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot switch in place")

    def close(self) -> None:
        """Release what the model holds (it may still finish a frame it is running)."""
        return


class InferenceBackend(ABC):
    """Loads descendants of catalogue entries and tells the bytes the manager accounts."""

    name: ClassVar[Backend]
    switches_in_place: ClassVar[bool] = False
    """Whether its loaded models change descendant in place (`LoadedModel.switch_in_place`)."""

    def __init__(self) -> None:
        self._tables: dict[str, list[Descendant]] = {}
        self._tables_lock = threading.Lock()

    def descendants(self, entry: CatalogueEntry) -> list[Descendant]:
        """The scheduler's A(d), M(d), L(d) of every descendant on this backend (cached)."""
        with self._tables_lock:
            table = self._tables.get(entry.name)
            if table is None:
                table = self._tables[entry.name] = self.describe(entry)
            return table

    def forget(self, names: list[str]) -> None:
        """Drop what was derived for these models (their files changed or went away)."""
        with self._tables_lock:
            for name in names:
                self._tables.pop(name, None)

    def describe(self, entry: CatalogueEntry) -> list[Descendant]:
        """A(d), M(d), L(d) per descendant: by default the profile's figures for this backend."""
        return entry.profiled(self.name)

    @abstractmethod
    def prepare(self, entries: list[CatalogueEntry]) -> None:
        """Make every descendant of ``entries`` loadable (raises a clear error if it cannot)."""

    @abstractmethod
    def open(self, entry: CatalogueEntry, descendant: int) -> LoadedModel:
        """Load a descendant from storage."""

    def reference_runner(self) -> Runner | None:
        """The reference stack (`profiles.reference`) on this backend, to time the machine's
        speed against the profiles'; None where the backend cannot run it."""
        return None

    def on_worker_start(self) -> None:
        """Called once in the executor's worker thread before its first frame."""
        return

    def close(self) -> None:
        """Release what the backend holds for loading (loaded models keep working)."""
        return


def softmax(logits: np.ndarray) -> list[list[float]]:
    """Each row of (N, classes) logits as probabilities (plain floats)."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).tolist()
