"""Daemon runtime: catalogue, model manager (memory budget), runtime events, restart safety.

Models are tiny synthetic `.nest` files (channel prefixes of a random VGG-11 on 1x16x16
inputs) with profiles written through the profile schema (latency measured, accuracies
assigned). No assertion depends on wall-clock time.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from scheduler.backends import TorchBackend
from scheduler.catalogue import ModelCatalogue
from scheduler.manager import ModelManager, Target
from scheduler.synthetic_models import synthetic_models_dir

MODELS = ("cam", "mic")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_models_dir(tmp_path_factory.mktemp("models"), MODELS)


@pytest.fixture(scope="module")
def catalogue(models_dir: Path) -> ModelCatalogue:
    catalogue = ModelCatalogue.load(models_dir)
    assert sorted(catalogue.entries) == sorted(MODELS)
    return catalogue


def frame_for(catalogue: ModelCatalogue, model: str) -> torch.Tensor:
    return torch.randn(catalogue.entries[model].input_shape)


def sizes(catalogue: ModelCatalogue, model: str) -> list[int]:
    return [d.memory_bytes for d in catalogue.entries[model].descendants("torch")]


@dataclass
class Ledger:
    """Records every ledger change: the accounted bytes and the limit in force."""

    steps: list[tuple[int, int, str]] = field(default_factory=list)

    def __call__(self, accounted: int, limit: int, why: str) -> None:
        self.steps.append((accounted, limit, why))

    def over_limit(self) -> list[tuple[int, int, str]]:
        return [s for s in self.steps if s[0] > s[1]]

    def max_over(self, budget: int, start: int = 0) -> int:
        return max((s[0] for s in self.steps[start:]), default=0) - budget


@contextlib.contextmanager
def no_jobs(_app_id: str) -> Iterator[None]:
    """The hold of a manager tested without an executor: nothing ever runs."""
    yield


# ------------------------------------------------------------------------------ catalogue


def test_catalogue_rejects_a_profile_of_another_file_and_keeps_the_rest(
    models_dir: Path, tmp_path: Path
) -> None:
    for name in ("cam", "mic"):
        for suffix in (".nest", ".profile.json"):
            shutil.copy(models_dir / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    shutil.copy(models_dir / "cam.nest", tmp_path / "mic.nest")  # profile no longer matches
    (tmp_path / "orphan.profile.json").write_text("{}")
    shutil.copy(models_dir / "cam.nest", tmp_path / "lonely.nest")
    (tmp_path / "broken.nest").write_bytes(b"not a safetensors file")
    shutil.copy(models_dir / "cam.profile.json", tmp_path / "broken.profile.json")

    catalogue = ModelCatalogue.load(tmp_path)

    assert sorted(catalogue.entries) == ["cam"]
    reasons = {r.name: r.reason for r in catalogue.rejected}
    assert sorted(reasons) == ["broken", "lonely", "mic", "orphan"]
    assert "measured on another file" in reasons["mic"]
    assert "no profile" in reasons["lonely"]
    assert "no orphan.nest" in reasons["orphan"]
    entry = catalogue.entries["cam"]
    assert entry.input_shape == (1, 16, 16)
    assert entry.class_names == ["class0", "class1", "class2", "class3"]


# -------------------------------------------------------------------------------- manager


def test_plans_apply_downgrades_first_and_never_pass_the_budget(
    catalogue: ModelCatalogue,
) -> None:
    """Swap which app is big: the downgrade must free its bytes before the upgrade loads."""
    cam = sizes(catalogue, "cam")
    budget = cam[2] + cam[0] + cam[0] // 2  # one big and one small, not two big
    ledger = Ledger()
    manager = ModelManager(TorchBackend(), budget, observer=ledger)
    entry = catalogue.entries["cam"]

    manager.apply({"a": Target(entry, 2), "b": Target(entry, 0)}, budget,
                  swapping=False, hold=no_jobs)
    manager.apply({"a": Target(entry, 0), "b": Target(entry, 2)}, budget,
                  swapping=False, hold=no_jobs)

    assert ledger.over_limit() == []
    assert ledger.max_over(budget) <= 0
    assert (manager.info("a").descendant, manager.info("b").descendant) == (0, 2)
    assert manager.accounted_bytes == cam[0] + cam[2]
    whys = [why for _, _, why in ledger.steps]
    first_up = next(i for i, w in enumerate(whys) if w.startswith("b:") and "d2" in w)
    last_down = max(i for i, w in enumerate(whys) if w.startswith("a:"))
    assert last_down < first_up


def test_an_upgrade_that_fits_beside_the_old_descendant_is_done_in_place(
    catalogue: ModelCatalogue,
) -> None:
    cam = sizes(catalogue, "cam")
    ledger = Ledger()
    manager = ModelManager(TorchBackend(), cam[0] + cam[2], observer=ledger)
    entry = catalogue.entries["cam"]
    manager.apply({"a": Target(entry, 0)}, cam[0] + cam[2], swapping=False, hold=no_jobs)
    manager.apply({"a": Target(entry, 2)}, cam[0] + cam[2], swapping=False, hold=no_jobs)
    assert [s[0] for s in ledger.steps if "a:" in s[2]] == [cam[0], cam[0] + cam[2], cam[2]]
    assert manager.info("a").loads == 1  # one load from storage, then the nested upgrade
    assert manager.info("a").switches == 1


def test_an_upgrade_without_room_for_both_goes_cold(catalogue: ModelCatalogue) -> None:
    cam = sizes(catalogue, "cam")
    budget = cam[2]
    ledger = Ledger()
    manager = ModelManager(TorchBackend(), budget, observer=ledger)
    entry = catalogue.entries["cam"]
    manager.apply({"a": Target(entry, 0)}, budget, swapping=False, hold=no_jobs)
    manager.apply({"a": Target(entry, 2)}, budget, swapping=False, hold=no_jobs)
    assert [s[0] for s in ledger.steps if "a:" in s[2]] == [cam[0], 0, cam[2]]
    assert ledger.over_limit() == []
    assert manager.info("a").loads == 2


def test_a_shrinking_budget_keeps_the_old_limit_until_the_downgrades_are_done(
    catalogue: ModelCatalogue,
) -> None:
    cam, mic = sizes(catalogue, "cam"), sizes(catalogue, "mic")
    ledger = Ledger()
    big = cam[2] + mic[2]
    manager = ModelManager(TorchBackend(), big, observer=ledger)
    entries = catalogue.entries
    manager.apply({"a": Target(entries["cam"], 2), "b": Target(entries["mic"], 2)}, big,
                  swapping=False, hold=no_jobs)
    small = cam[1] + mic[1]
    manager.apply({"a": Target(entries["cam"], 1), "b": Target(entries["mic"], 1)}, small,
                  swapping=False, hold=no_jobs)
    assert ledger.over_limit() == []
    assert manager.limit == small
    assert manager.accounted_bytes == small


def test_swapping_loads_on_demand_and_evicts_the_least_recently_used(
    catalogue: ModelCatalogue,
) -> None:
    """The baseline's fixed descendants do not fit together: they take turns."""
    cam, mic = sizes(catalogue, "cam"), sizes(catalogue, "mic")
    budget = max(cam[2], mic[2])
    ledger = Ledger()
    manager = ModelManager(TorchBackend(), budget, observer=ledger)
    entries = catalogue.entries
    manager.apply({"a": Target(entries["cam"], 2), "b": Target(entries["mic"], 2)}, budget,
                  swapping=True, hold=no_jobs)
    assert manager.accounted_bytes == 0
    for app, model in [("a", "cam"), ("b", "mic"), ("a", "cam")]:
        probabilities, descendant = manager.run(app, frame_for(catalogue, model))
        assert descendant == 2
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert ledger.over_limit() == []
    assert (manager.info("a").loads, manager.info("b").loads) == (2, 1)
    assert manager.info("b").descendant is None  # evicted for a's second turn
    assert (manager.info("a").switches, manager.info("b").switches) == (0, 0)
