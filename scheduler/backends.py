"""Inference backends of the model manager: a loaded descendant and how to open one.

``torch``: the descendant lives in a `NestedModel` handle; switching to another descendant of
the same model reads only the levels that differ (upgrade) or slices (downgrade), in place.
The backend opens (validates, maps) every ``.nest`` file once and keeps that reader, with
its per-level model skeletons, for all loads of the file: a cold load then only copies the
descendant's tensors out of the mapping (measured: 1-10 ms instead of 60-130 ms for the
synthetic VGG-16/ResNet-20/VGG-11 models, where rebuilding the skeletons dominated).
``tflite``: every descendant is its own flatbuffer, exported once from the ``.nest`` file and
cached on disk; a switch loads the other flatbuffer. Its memory is the flatbuffer's size.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nestdnn.nestfile import NestedModel, _NestReader
from profiles.tflite import converted_descendants, tflite_interpreter_class
from scheduler.catalogue import CatalogueEntry
from scheduler.problem import Descendant


class LoadedModel(ABC):
    """One resident descendant that can run frames."""

    @property
    @abstractmethod
    def descendant(self) -> int:
        """Index of the descendant that runs frames now."""

    @abstractmethod
    def predict(self, frame: Tensor) -> list[float]:
        """Class probabilities for one (C, H, W) frame."""

    def switch_in_place(self, descendant: int) -> None:
        """Become another descendant without reopening (only if `switches_in_place`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot switch in place")

    def close(self) -> None:
        """Release files held open (the model may still finish a frame it is running)."""
        return

    switches_in_place = False


class Backend(ABC):
    """Opens descendants and tells the bytes the manager accounts for each."""

    name: str

    @abstractmethod
    def descendants(self, entry: CatalogueEntry) -> list[Descendant]:
        """The scheduler's A(d), M(d), L(d) of every descendant on this backend."""

    @abstractmethod
    def open(self, entry: CatalogueEntry, descendant: int) -> LoadedModel:
        """Load a descendant from storage."""

    @abstractmethod
    def prepare(self, entries: list[CatalogueEntry]) -> None:
        """Make every descendant of ``entries`` loadable (raises a clear error if it cannot)."""

    def close(self) -> None:
        """Release what the backend holds for loading (models already loaded keep working)."""
        return


def softmax_list(logits: Tensor) -> list[float]:
    """Probabilities of a (1, classes) logit row as plain floats."""
    return torch.softmax(logits.reshape(-1).float(), dim=0).tolist()


# ------------------------------------------------------------------------------------ torch


class TorchModel(LoadedModel):
    """A descendant held by the nested handle; upgrades read only the added levels.

    The handle reads from the backend's shared reader of the file, so closing the model
    only drops the handle's tensors (when the model is dropped); the file stays open for
    the next load.
    """

    switches_in_place = True

    def __init__(self, handle: NestedModel) -> None:
        self._handle = handle

    @property
    def descendant(self) -> int:
        return self._handle.level

    def predict(self, frame: Tensor) -> list[float]:
        with torch.inference_mode():
            return softmax_list(self._handle.module(frame.unsqueeze(0)))

    def switch_in_place(self, descendant: int) -> None:
        self._handle.switch(descendant)


class TorchBackend(Backend):
    """PyTorch eager on the nested handle; memory = the descendant's fp32 weight bytes.

    One validated reader per file, opened by `prepare` (or at the first load) and kept until
    `close`: it maps the file (page cache, not resident model bytes, so not in the ledger)
    and holds the models' skeletons on the meta device (no tensor storage). The reader keeps
    the file it opened even if the path is replaced later: the daemon serves the file its
    catalogue validated.
    """

    name = "torch"

    def __init__(self) -> None:
        self._readers: dict[Path, _NestReader] = {}
        self._lock = threading.Lock()

    def prepare(self, entries: list[CatalogueEntry]) -> None:
        """Open (validate and map) every model's file once, before any load."""
        for entry in entries:
            self._reader(entry.nest_path)

    def descendants(self, entry: CatalogueEntry) -> list[Descendant]:
        return entry.descendants("torch")

    def open(self, entry: CatalogueEntry, descendant: int) -> LoadedModel:
        return TorchModel(NestedModel(self._reader(entry.nest_path), descendant))

    def close(self) -> None:
        """Close every file; loaded models keep their tensors but can no longer switch."""
        with self._lock:
            readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            reader.close()

    def _reader(self, path: Path) -> _NestReader:
        with self._lock:
            reader = self._readers.get(path)
            if reader is None or reader.closed:
                reader = self._readers[path] = _NestReader(path)
            return reader


# ----------------------------------------------------------------------------------- tflite


class TfliteModel(LoadedModel):
    """A descendant's flatbuffer in a TFLite interpreter."""

    def __init__(self, descendant: int, flatbuffer: Path, threads: int) -> None:
        interpreter = tflite_interpreter_class()(model_path=str(flatbuffer), num_threads=threads)
        interpreter.allocate_tensors()
        self._interpreter = interpreter
        self._input = interpreter.get_input_details()[0]["index"]
        self._output = interpreter.get_output_details()[0]["index"]
        self._descendant = descendant

    @property
    def descendant(self) -> int:
        return self._descendant

    def predict(self, frame: Tensor) -> list[float]:
        batch = frame.unsqueeze(0).numpy().astype(np.float32, copy=False)
        self._interpreter.set_tensor(self._input, batch)
        self._interpreter.invoke()
        return softmax_list(torch.from_numpy(self._interpreter.get_tensor(self._output)))


class TfliteBackend(Backend):
    """TFLite runtime on per-descendant flatbuffers; memory = the flatbuffer's bytes.

    Flatbuffers come from the profiler's conversion cache beside each ``.nest`` file (keyed
    by its content hash), so a model profiled on ``tflite`` is never converted again.
    """

    name = "tflite"

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._flatbuffers: dict[str, list[Path]] = {}

    def prepare(self, entries: list[CatalogueEntry]) -> None:
        """Convert (once) and locate every descendant's flatbuffer; clear error if impossible."""
        for entry in entries:
            self._flatbuffers[entry.name] = converted_descendants(
                entry.nest_path, entry.sha256, range(entry.num_descendants))

    def descendants(self, entry: CatalogueEntry) -> list[Descendant]:
        return [d.model_copy(update={"memory_bytes": path.stat().st_size})
                for d, path in zip(entry.descendants("tflite"), self._flatbuffers[entry.name],
                                   strict=True)]

    def open(self, entry: CatalogueEntry, descendant: int) -> LoadedModel:
        return TfliteModel(descendant, self._flatbuffers[entry.name][descendant], self._threads)
