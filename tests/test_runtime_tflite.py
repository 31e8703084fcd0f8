"""The runtime's tflite backend: per-descendant flatbuffers, flatbuffer bytes accounted."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch

from nestdnn.errors import NestError
from nestdnn.nested import load_descendant
from profiles.schema import load_profile, save_profile
from profiles.synthetic import (
    synthetic_models_dir,
    write_synthetic_nest,
    write_synthetic_profile,
)
from scheduler.daemon import AppSpec, ModelCatalogue, Runtime, RuntimeSettings

HAVE_CONVERTER = importlib.util.find_spec("litert_torch") is not None


def with_copied_tflite_figures(profile_path: Path) -> None:
    """Give a profile without tflite figures torch's as tflite's (enough to reach conversion)."""
    profile = load_profile(profile_path)
    descendants = [d.model_copy(update={"backends": {**d.backends, "tflite": d.backends["torch"]}})
                   for d in profile.descendants]
    save_profile(profile.model_copy(update={
        "backends": [*profile.backends, "tflite"],
        "conditions": {**profile.conditions, "tflite": profile.conditions["torch"]},
        "descendants": descendants,
    }), profile_path)


@pytest.fixture(scope="module")
def models_without_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_models_dir(tmp_path_factory.mktemp("models"), ["cam"])


@pytest.fixture
def models(models_without_tflite: Path, tmp_path: Path) -> Path:
    """A fresh copy (no conversion cache beside it)."""
    return Path(shutil.copytree(models_without_tflite, tmp_path / "models"))


def test_without_the_converter_the_tflite_backend_fails_at_start_with_a_clear_error(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_copied_tflite_figures(models / "cam.profile.json")
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import fails
    runtime = Runtime(ModelCatalogue.load(models),
                      RuntimeSettings(memory_budget_bytes=1 << 30, backend="tflite"))
    with pytest.raises(NestError, match=r"pip install 'nestdnn\[export\]'"):
        runtime.start()


def test_a_model_without_tflite_figures_is_rejected_for_the_tflite_backend(
    models: Path,
) -> None:
    catalogue = ModelCatalogue.load(models)
    runtime = Runtime(catalogue, RuntimeSettings(memory_budget_bytes=1 << 30, backend="tflite"))
    runtime.start()
    try:
        assert catalogue.entries == {}
        assert "no 'tflite' figures" in catalogue.rejected[0].reason
    finally:
        runtime.stop()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_CONVERTER, reason="litert-torch (the export extra) not installed")
def test_tflite_backend_serves_flatbuffers_and_accounts_their_bytes(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write_synthetic_nest(models / "cam.nest", width_mults=(0.125, 0.25),
                         accuracies=(0.7, 0.8))
    write_synthetic_profile(models / "cam.nest", backends=("torch", "tflite"))
    flatbuffers = sorted((models / "cam.nest.tflite").glob("*/d*.tflite"))
    sizes = [p.stat().st_size for p in flatbuffers]
    runtime = Runtime(ModelCatalogue.load(models),
                      RuntimeSettings(memory_budget_bytes=sum(sizes), backend="tflite"))
    runtime.start()
    try:
        app = runtime.register(AppSpec(model="cam", target_latency_s=10.0))
        assert app.descendant == 1
        assert runtime.snapshot().accounted_bytes == sizes[1]
        frame = torch.randn(1, 16, 16)
        got = runtime.submit(app.id, frame).result(timeout=120)
        with torch.inference_mode():
            expected = torch.softmax(load_descendant(models / "cam.nest", 1)(frame[None])[0], 0)
        assert got.descendant == 1
        assert got.probabilities == pytest.approx(expected.tolist(), abs=1e-4)
        runtime.set_policy(memory_budget_bytes=sizes[0])
        snap = runtime.snapshot()
        assert (snap.apps[0].descendant, snap.accounted_bytes) == (0, sizes[0])
        assert runtime.submit(app.id, frame).result(timeout=120).descendant == 0
    finally:
        runtime.stop()
