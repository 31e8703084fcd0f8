"""Nothing acknowledged is lost: apps survive broken, changed, removed and rebuilt models."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from profiles.synthetic import synthetic_models_dir, write_synthetic_nest, write_synthetic_profile
from scheduler.daemon import (
    AppSpec,
    ModelCatalogue,
    ModelUnavailable,
    Runtime,
    RuntimeSettings,
)
from scheduler.daemon.state import STATE_FILE


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_models_dir(tmp_path_factory.mktemp("models"), ["cam", "mic"])


@pytest.fixture
def models(source: Path, tmp_path: Path) -> Path:
    out = tmp_path / "models"
    out.mkdir()
    for path in source.glob("*.nest"):
        for suffix in ("", ".profile.json"):
            name = path.name if not suffix else path.name.removesuffix(".nest") + suffix
            shutil.copy(source / name, out / name)
    return out


def started(models: Path, state: Path) -> Runtime:
    runtime = Runtime(ModelCatalogue.load(models),
                      RuntimeSettings(memory_budget_bytes=1 << 30, state_dir=state))
    runtime.start()
    return runtime


def frame(runtime: Runtime, model: str) -> np.ndarray:
    return np.zeros(runtime.catalogue.entries[model].input_shape, dtype=np.float32)


def truncate(path: Path) -> None:
    """What `cp new.nest models/` does to the old file first: cut it short, in place."""
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_an_app_whose_model_broke_stays_registered_and_serves_again_once_fixed(
    models: Path, tmp_path: Path
) -> None:
    runtime = started(models, tmp_path / "state")
    cam = runtime.register(AppSpec(model="cam", fps=30))
    mic = runtime.register(AppSpec(model="mic", fps=30))
    runtime.stop()
    original = (models / "cam.nest").read_bytes()
    truncate(models / "cam.nest")

    runtime = started(models, tmp_path / "state")
    try:
        states = {a.id: (a.state, a.problem) for a in runtime.snapshot().apps}
        assert states[mic.id] == ("serving", None)
        state, problem = states[cam.id]
        assert state == "unavailable" and "truncated" in problem
        with pytest.raises(ModelUnavailable, match="truncated"):
            runtime.submit(cam.id, np.zeros((1, 16, 16), dtype=np.float32))
        runtime.submit(mic.id, frame(runtime, "mic")).result(timeout=60)

        (models / "cam.nest").write_bytes(original)  # fixed while running
        runtime.reload()
        assert runtime.info(cam.id).state == "serving"
        assert runtime.submit(cam.id, frame(runtime, "cam")).result(timeout=60).descendant >= 0
    finally:
        runtime.stop()


def test_a_file_truncated_under_the_running_daemon_never_crashes_it(
    models: Path, tmp_path: Path
) -> None:
    """Loaded descendants keep serving the validated weights; a load that needs the changed
    file is refused (ModelUnavailable), the process lives on; a reload makes the model
    unavailable without losing its app."""
    runtime = started(models, tmp_path / "state")
    try:
        cam = runtime.register(AppSpec(model="cam", fps=30))
        truncate(models / "cam.nest")
        assert runtime.submit(cam.id, frame(runtime, "cam")).result(timeout=60)
        with pytest.raises(ModelUnavailable, match="changed on disk"):
            runtime.set_policy(memory_budget_bytes=runtime.snapshot().apps[0].resident_bytes - 1)
        assert runtime.info(cam.id).state == "serving"  # the refused event changed nothing
        runtime.reload()
        assert runtime.info(cam.id).state == "unavailable"
        assert [a.id for a in runtime.snapshot().apps] == [cam.id]
    finally:
        runtime.stop()


def test_a_file_replaced_by_rename_serves_the_validated_one_until_a_reload(
    models: Path, tmp_path: Path
) -> None:
    runtime = started(models, tmp_path / "state")
    try:
        cam = runtime.register(AppSpec(model="cam", fps=30))
        before = runtime.catalogue.entries["cam"].sha256
        replacement = tmp_path / "new.nest"
        write_synthetic_nest(replacement, arch="vgg11", in_channels=1, input_size=16,
                             num_classes=4, width_mults=(0.125, 0.25), accuracies=(0.6, 0.7),
                             seed=9)
        write_synthetic_profile(replacement)
        os.replace(replacement.with_name("new.profile.json"), models / "cam.profile.json")
        os.replace(replacement, models / "cam.nest")
        assert runtime.submit(cam.id, frame(runtime, "cam")).result(timeout=60)
        assert runtime.catalogue.entries["cam"].sha256 == before
        runtime.reload()
        entry = runtime.catalogue.entries["cam"]
        assert entry.sha256 != before and entry.num_descendants == 2
        prediction = runtime.submit(cam.id, frame(runtime, "cam")).result(timeout=60)
        assert prediction.descendant in (0, 1)
    finally:
        runtime.stop()


def test_a_removed_model_leaves_its_apps_registered_and_unavailable(
    models: Path, tmp_path: Path
) -> None:
    runtime = started(models, tmp_path / "state")
    try:
        cam = runtime.register(AppSpec(model="cam", fps=30))
        (models / "cam.nest").unlink()
        runtime.reload()
        info = runtime.info(cam.id)
        assert info.state == "unavailable" and "no cam.nest" in info.problem
        assert runtime.snapshot().accounted_bytes == 0
    finally:
        runtime.stop()


def test_a_state_file_naming_a_vanished_descendant_is_reconciled(
    models: Path, tmp_path: Path
) -> None:
    """The model was rebuilt with fewer descendants since the state was written: the restart
    plans that app afresh instead of failing."""
    runtime = started(models, tmp_path / "state")
    cam = runtime.register(AppSpec(model="cam", fps=30))
    runtime.stop()
    state_path = tmp_path / "state" / STATE_FILE
    state = json.loads(state_path.read_text())
    state["plan"]["apps"][0]["descendant"] = 7  # cam has 3
    state_path.write_text(json.dumps(state))
    runtime = started(models, tmp_path / "state")
    try:
        assert runtime.info(cam.id).state == "serving"
        assert runtime.submit(cam.id, frame(runtime, "cam")).result(timeout=60)
    finally:
        runtime.stop()


def test_apps_that_no_longer_fit_wait_instead_of_being_dropped(
    models: Path, tmp_path: Path
) -> None:
    """The persisted budget cannot hold both restored apps even at their smallest: the newest
    waits (registered, its frames refused with the reason) and is planned in again as soon
    as there is room."""
    runtime = started(models, tmp_path / "state")
    first = runtime.register(AppSpec(model="cam", fps=30))
    second = runtime.register(AppSpec(model="mic", fps=30))
    smallest = {m: runtime.catalogue.entries[m].profiled("onnxruntime")[0].memory_bytes
                for m in ("cam", "mic")}
    runtime.stop()
    state_path = tmp_path / "state" / STATE_FILE
    state = json.loads(state_path.read_text())
    state["memory_budget_bytes"] = sum(smallest.values()) - 1
    state_path.write_text(json.dumps(state))
    runtime = started(models, tmp_path / "state")
    try:
        assert {a.id: a.state for a in runtime.snapshot().apps} == {
            first.id: "serving", second.id: "waiting"}
        with pytest.raises(ModelUnavailable, match="waiting"):
            runtime.submit(second.id, frame(runtime, "mic"))
        runtime.set_policy(memory_budget_bytes=1 << 30)
        assert runtime.info(second.id).state == "serving"
        assert runtime.submit(second.id, frame(runtime, "mic")).result(timeout=60)
    finally:
        runtime.stop()


def test_a_snapshot_in_the_middle_of_a_reload_lists_every_app(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the new catalogue and the new plan (a reload re-attaching the apps of a changed
    model), readers see every app, and no descendant the rebuilt model lacks: before, such a
    snapshot dropped the app, or failed and turned a registration that had succeeded into a
    500; and the app's frames were refused as if it did not exist (404), not as unavailable."""
    runtime = started(models, tmp_path / "state")
    try:
        cam = runtime.register(AppSpec(model="cam", fps=30))
        assert runtime.info(cam.id).descendant == 2
        replacement = tmp_path / "new.nest"
        write_synthetic_nest(replacement, width_mults=(0.125, 0.25), accuracies=(0.6, 0.7),
                             seed=9)
        write_synthetic_profile(replacement)
        os.replace(replacement.with_name("new.profile.json"), models / "cam.profile.json")
        os.replace(replacement, models / "cam.nest")
        seen = []
        replan = Runtime._replan_reloaded

        def observed(self: Runtime, changed: set[str]) -> None:
            seen.append(self.snapshot())
            with pytest.raises(ModelUnavailable, match="re-planned"):  # not an unknown app
                self.submit(cam.id, np.zeros((1, 16, 16), dtype=np.float32))
            replan(self, changed)

        monkeypatch.setattr(Runtime, "_replan_reloaded", observed)
        runtime.reload()
        [app] = seen[0].apps
        assert app.id == cam.id and app.latency_assumed_s is None
        assert runtime.submit(cam.id, frame(runtime, "cam")).result(timeout=60).descendant < 2
    finally:
        runtime.stop()
