"""TFLite runtime on per-descendant flatbuffers; memory = the profile's measured resident bytes.

Every descendant is its own flatbuffer, converted once from the ``.nest`` (through
``nestdnn.export``, litert-torch) and cached beside the model file, keyed by the file's
hash: the profiler's conversion cache, so a model profiled on ``tflite`` is never converted
again. A switch loads the other flatbuffer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from profiles.tflite import converted_descendants, tflite_interpreter_class
from scheduler.daemon.backends.base import InferenceBackend, LoadedModel
from scheduler.daemon.catalogue import CatalogueEntry


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

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """One frame at a time: the flatbuffer's input has batch size 1."""
        rows = []
        for frame in batch:
            self._interpreter.set_tensor(self._input, frame[None])
            self._interpreter.invoke()
            rows.append(self._interpreter.get_tensor(self._output)[0])
        return np.stack(rows)


class TfliteBackend(InferenceBackend):
    """The TFLite runtime (XNNPACK) on flatbuffers converted from the `.nest`."""

    name = "tflite"

    def __init__(self, threads: int = 1) -> None:
        super().__init__()
        self._threads = threads
        self._flatbuffers: dict[str, list[Path]] = {}

    def prepare(self, entries: list[CatalogueEntry]) -> None:
        """Convert (once) and locate every descendant's flatbuffer; clear error if impossible."""
        for entry in entries:
            self._flatbuffers[entry.name] = converted_descendants(
                entry.nest_path, entry.sha256, range(entry.num_descendants))

    def open(self, entry: CatalogueEntry, descendant: int) -> LoadedModel:
        return TfliteModel(descendant, self._flatbuffers[entry.name][descendant], self._threads)
