"""PyTorch eager on the nested handle: switching reads only the levels that differ.

The descendant lives in a `NestedModel` over the catalogue's open `NestFile`; an upgrade reads
only the blocks of the added levels, a downgrade slices, both in place. The module templates
of every descendant are built once per file (`Templates`), so a cold load only copies the
descendant's tensors out of the file and instantiates the module (measured: 1-10 ms instead
of 60-130 ms for the synthetic VGG-16/ResNet-20/VGG-11 models, where rebuilding the
skeletons dominated). Memory accounted: the descendant's fp32 weight bytes.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from nestdnn.nested import NestedModel, Templates
from profiles.latency import Runner
from scheduler.daemon.backends.base import InferenceBackend, LoadedModel
from scheduler.daemon.catalogue import CatalogueEntry


class TorchModel(LoadedModel):
    """A descendant held by the nested handle; upgrades read only the added levels."""

    switches_in_place = True

    def __init__(self, handle: NestedModel) -> None:
        self._handle = handle

    @property
    def descendant(self) -> int:
        return self._handle.level

    def logits(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self._handle.module(torch.from_numpy(batch)).numpy()

    def switch_in_place(self, descendant: int) -> None:
        self._handle.switch(descendant)


class TorchBackend(InferenceBackend):
    """PyTorch eager; memory = the descendant's fp32 weight bytes."""

    name = "torch"
    switches_in_place = True

    def __init__(self, threads: int = 1) -> None:
        super().__init__()
        self._threads = threads
        self._templates: dict[str, Templates] = {}
        self._lock = threading.Lock()

    def prepare(self, entries: list[CatalogueEntry]) -> None:
        """Build every model's module templates once, before any load."""
        for entry in entries:
            self._templates_of(entry).build_all()

    def open(self, entry: CatalogueEntry, descendant: int) -> LoadedModel:
        return TorchModel(NestedModel(entry.nest, descendant, self._templates_of(entry)))

    def forget(self, names: list[str]) -> None:
        super().forget(names)
        with self._lock:
            for name in names:
                self._templates.pop(name, None)

    def on_worker_start(self) -> None:
        torch.set_num_threads(self._threads)

    def reference_runner(self) -> Runner:
        from profiles.torch_backend import reference_runner

        run = reference_runner()

        def timed() -> object:
            with torch.inference_mode():
                return run()

        return timed

    def _templates_of(self, entry: CatalogueEntry) -> Templates:
        with self._lock:
            templates = self._templates.get(entry.name)
            if templates is None:
                templates = self._templates[entry.name] = Templates(entry.nest)
            return templates
