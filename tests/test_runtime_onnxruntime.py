"""The default backend: onnxruntime sessions built from the `.nest` and its cached graphs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nestdnn.nested import load_descendant
from profiles.onnxrt import graph_cache
from profiles.schema import DEFAULT_BACKEND
from profiles.synthetic import synthetic_models_dir
from scheduler.daemon import AppSpec, ModelCatalogue, Runtime, RuntimeSettings


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_models_dir(tmp_path_factory.mktemp("models"), ["cam"])


@pytest.fixture
def models(source: Path, tmp_path: Path) -> Path:
    """Only NAME.nest + NAME.profile.json: no derived files beside them."""
    out = tmp_path / "models"
    out.mkdir()
    for name in ("cam.nest", "cam.profile.json"):
        shutil.copy(source / name, out / name)
    return out


def predictions(models: Path, frame: np.ndarray) -> list[tuple[int, list[float]]]:
    """(descendant, probabilities) of one frame on every descendant, with the default backend."""
    catalogue = ModelCatalogue.load(models)
    entry = catalogue.entries["cam"]
    out = []
    for descendant in entry.profiled(DEFAULT_BACKEND):  # a budget that fits it, not the next
        runtime = Runtime(catalogue,
                          RuntimeSettings(memory_budget_bytes=descendant.memory_bytes))
        runtime.start()
        try:
            app = runtime.register(AppSpec(model="cam", target_latency_s=1.0))
            result = runtime.submit(app.id, frame).result(timeout=60)
            out.append((result.descendant, result.probabilities))
        finally:
            runtime.stop()
    catalogue.close()
    return out


def test_a_fresh_directory_is_served_and_matches_torch(models: Path) -> None:
    """The graphs are built at start (a few kB each, beside the file) and the predictions are
    torch's; the default backend is onnxruntime."""
    assert RuntimeSettings(memory_budget_bytes=1).backend == "onnxruntime"
    frame = np.random.default_rng(3).standard_normal((1, 16, 16)).astype(np.float32)
    served = predictions(models, frame)
    with ModelCatalogue.load(models).entries["cam"].nest as nest:
        report = graph_cache(nest).report()
    assert report.files == 3 and 0 < report.bytes < (models / "cam.nest").stat().st_size / 20
    for descendant, probabilities in served:
        with torch.no_grad():
            logits = load_descendant(models / "cam.nest", descendant)(torch.from_numpy(frame)[None])
        expected = torch.softmax(logits[0], 0).numpy()
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert [d for d, _ in served] == [0, 1, 2]


def test_a_corrupt_graph_is_rebuilt_never_served(models: Path) -> None:
    frame = np.zeros((1, 16, 16), dtype=np.float32)
    first = predictions(models, frame)
    with ModelCatalogue.load(models).entries["cam"].nest as nest:
        cache = graph_cache(nest)
        cache.path(2).write_bytes(b"\x08\x08 not a graph")
    assert predictions(models, frame) == first
    with ModelCatalogue.load(models).entries["cam"].nest as nest:
        assert graph_cache(nest).get(2) is not None  # rebuilt and recorded again
