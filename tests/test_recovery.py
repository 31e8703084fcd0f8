"""Freeze-&-grow recovery: step choice, level order, the freeze, and the recovered .nest file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from nestdnn.errors import NestError
from nestdnn.models import build_model
from pruning.roadmap import PruneSettings, Roadmap, RoadmapStep
from recovery.freeze import Freezer, block_index
from recovery.levels import choose_steps, plan_levels, validate_steps
from recovery.roadmap import PruneRun

# --- choosing steps and ordering channels ---------------------------------------------------


def fake_run(params: list[int], kept: list[list[int]] | None = None) -> PruneRun:
    """A finished pruning run with one group 'g'; step s has params[s] and kept[s]."""
    kept = kept or [list(range(len(params) - s)) for s in range(len(params))]
    steps = [
        RoadmapStep(step=s, file=f"step_{s:02d}.pt", widths={"g": len(k)}, kept={"g": k},
                    val_accuracy=0.9, params=p, macs=p)
        for s, (p, k) in enumerate(zip(params, kept, strict=True))
    ]
    roadmap = Roadmap(
        vanilla="vanilla.pt", vanilla_sha256="", model_config={"widths": {"g": len(kept[0])}},
        dataset={"name": "synthetic"},
        settings=PruneSettings(criterion="l1", ratio=0.1, min_accuracy=0.5, retrain_epochs=1),
        steps=steps, stopped="min_accuracy",
    )
    return PruneRun(Path("prune"), roadmap, digest="0")


def test_default_steps_are_evenly_spread_in_params_from_seed_to_vanilla() -> None:
    run = fake_run([100, 90, 80, 70, 60, 50, 40, 30, 20])
    assert choose_steps(run, 5) == [8, 6, 4, 2, 0]
    assert choose_steps(run, 2) == [8, 0]
    assert choose_steps(run, 9) == list(range(8, -1, -1))


def test_default_steps_follow_params_not_step_numbers() -> None:
    run = fake_run([100, 95, 90, 50, 45, 20])
    assert choose_steps(run, 3) == [5, 3, 0]  # 50 params is nearest to the midpoint 60
    crowded = fake_run([100, 21, 20])
    assert choose_steps(crowded, 3) == [2, 1, 0]  # distinct steps even when targets collide


def test_bad_descendant_choices_are_refused() -> None:
    run = fake_run([100, 80, 60])
    with pytest.raises(NestError, match="only 3 steps"):
        choose_steps(run, 4)
    with pytest.raises(NestError, match="at least 2"):
        choose_steps(run, 1)
    with pytest.raises(NestError, match="step 7 is not in the roadmap"):
        validate_steps(run, [0, 7])
    with pytest.raises(NestError, match="distinct"):
        validate_steps(run, [1, 1])
    assert validate_steps(run, [0, 2]) == [2, 0]


def test_channels_are_ordered_by_the_level_that_adds_them() -> None:
    run = fake_run([60, 40, 20], kept=[[0, 1, 2, 3, 4, 5], [0, 2, 3, 5], [2, 5]])
    plan = plan_levels(run, [2, 1, 0])
    assert plan.order["g"].tolist() == [2, 5, 0, 3, 1, 4]
    # step 1 keeps originals [0, 2, 3, 5]; level order wants [2, 5, 0, 3] -> its channels 1, 3, 0, 2
    assert plan.local_indices(1)["g"].tolist() == [1, 3, 0, 2]
    assert plan.local_indices(0)["g"].tolist() == [0, 1]
    assert [plan.widths(k)["g"] for k in range(3)] == [2, 4, 6]


# --- the freeze ------------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                                 weight_decay=5e-3),
    "adam-wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


def tiny_vgg() -> nn.Module:
    torch.manual_seed(0)
    widths = {g: 6 for g in build_model("vgg11", input_size=8, width_mult=0.125).groups()}
    return build_model("vgg11", in_channels=3, num_classes=4, input_size=8, widths=widths)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, after_step, steps: int = 6
                ) -> None:
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        after_step()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_frozen_blocks_stay_bit_identical_and_the_rest_trains(name: str) -> None:
    model = tiny_vgg()
    frozen_widths = {g: 3 for g in model.groups()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freezer = Freezer(model, frozen_widths)
    train_steps(model, OPTIMIZERS[name](model.parameters()), freezer.restore)
    axes = model.param_axes()
    for key, param in model.named_parameters():
        if param.dim() < 2:
            continue
        index = block_index(axes[key], frozen_widths)
        assert torch.equal(param[index], before[key][index]), key
        outside = torch.ones_like(param, dtype=torch.bool)
        outside[index] = False
        assert not torch.equal(param[outside], before[key][outside]), f"{key} did not train"


def test_frozen_gradients_are_zero_and_restoring_is_what_undoes_weight_decay() -> None:
    model = tiny_vgg()
    frozen_widths = {g: 3 for g in model.groups()}
    conv = model.features[0].weight
    before = conv.detach().clone()
    freezer = Freezer(model, frozen_widths)
    optimizer = OPTIMIZERS["sgd-momentum-wd"](model.parameters())
    train_steps(model, optimizer, after_step=lambda: None, steps=1)
    assert conv.grad[:3].abs().sum() == 0 and conv.grad[3:].abs().sum() > 0
    assert not torch.equal(conv[:3], before[:3])  # zero gradients alone: weight decay moves it
    freezer.restore()
    assert torch.equal(conv[:3], before[:3])
    freezer.release()
    train_steps(model, optimizer, after_step=lambda: None, steps=1)
    assert conv.grad[:3].abs().sum() > 0
