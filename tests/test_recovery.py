"""Freeze-&-grow recovery: step choice, level order, the freeze, and the recovered .nest file."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

import recovery.grow
from nestdnn.checkpoint import load_checkpoint, save_checkpoint
from nestdnn.cli import main
from nestdnn.data import DatasetSplits, DataSpec, SyntheticConfig, load_dataset
from nestdnn.errors import NestError
from nestdnn.models import build_model
from nestdnn.nested import load_descendant
from nestdnn.nestfile import read_manifest
from nestdnn.training import TrainConfig, evaluate, train
from pruning.prune import PruneJob, prune
from pruning.roadmap import PruneSettings, Roadmap, RoadmapStep
from recovery.freeze import Freezer, block_index
from recovery.grow import (
    RecoveryConfig,
    RecoveryResult,
    distillation_loss,
    level_start_model,
    recover,
    work_dir_for,
)
from recovery.levels import LevelPlan, choose_steps, plan_levels, validate_steps
from recovery.prune_run import PruneRun, open_prune_run

# --- choosing steps and ordering channels ---------------------------------------------------


def fake_run(params: list[int], kept: list[list[int]] | None = None) -> PruneRun:
    """A finished pruning run with one group 'g'; step s has params[s] and kept[s]."""
    kept = kept or [list(range(len(params) - s)) for s in range(len(params))]
    steps = [
        RoadmapStep(
            step=s,
            file=f"step_{s:02d}.pt",
            widths={"g": len(k)},
            kept={"g": k},
            val_accuracy=0.9,
            params=p,
            macs=p,
        )
        for s, (p, k) in enumerate(zip(params, kept, strict=True))
    ]
    roadmap = Roadmap(
        vanilla="vanilla.pt",
        vanilla_sha256="",
        model_config={"widths": {"g": len(kept[0])}},
        dataset=DataSpec("synthetic"),
        settings=PruneSettings(criterion="l1", ratio=0.1, min_accuracy=0.5, retrain_epochs=1),
        steps=steps,
        stopped="min_accuracy",
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
    "sgd-momentum-wd": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-3
    ),
    "adam-wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


def tiny_vgg() -> nn.Module:
    torch.manual_seed(0)
    widths = {g: 6 for g in build_model("vgg11", input_size=8, width_mult=0.125).groups()}
    return build_model("vgg11", in_channels=3, num_classes=4, input_size=8, widths=widths)


def train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, before_step, after_step, steps: int = 6
) -> None:
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        before_step()
        optimizer.step()
        after_step()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_frozen_blocks_stay_bit_identical_and_the_rest_trains(name: str) -> None:
    model = tiny_vgg()
    frozen_widths = {g: 3 for g in model.groups()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freezer = Freezer(model, frozen_widths)
    train_steps(model, OPTIMIZERS[name](model.parameters()), freezer.mask_grads, freezer.restore)
    axes = model.param_axes()
    for key, param in model.named_parameters():
        if param.dim() < 2:
            continue
        index = block_index(axes[key], frozen_widths)
        assert torch.equal(param[index], before[key][index]), key
        outside = torch.ones_like(param, dtype=torch.bool)
        outside[index] = False
        assert not torch.equal(param[outside], before[key][outside]), f"{key} did not train"


def test_masked_grads_are_zero_in_the_block_and_restoring_undoes_weight_decay() -> None:
    model = tiny_vgg()
    frozen_widths = {g: 3 for g in model.groups()}
    conv = model.features[0].weight
    before = conv.detach().clone()
    freezer = Freezer(model, frozen_widths)
    optimizer = OPTIMIZERS["sgd-momentum-wd"](model.parameters())
    train_steps(model, optimizer, lambda: None, lambda: None, steps=1)
    assert conv.grad[:3].abs().sum() > 0  # nothing is masked unless asked
    train_steps(model, optimizer, freezer.mask_grads, lambda: None, steps=1)
    assert conv.grad[:3].abs().sum() == 0 and conv.grad[3:].abs().sum() > 0
    assert not torch.equal(conv[:3], before[:3])  # zero gradients alone: weight decay moves it
    freezer.restore()
    assert torch.equal(conv[:3], before[:3])


# --- recovery end to end (a real pruning run on generated data) -----------------------------

ARCH_WIDTHS = {"vgg11": 8, "resnet20": 6}


@dataclass
class Recovered:
    run: PruneRun
    plan: LevelPlan
    splits: DatasetSplits
    config: RecoveryConfig
    result: RecoveryResult


def prune_tiny(tmp: Path, arch: str, splits: DatasetSplits, synthetic: SyntheticConfig
               ) -> PruneRun:
    """Train a tiny vanilla model for one epoch and prune it three steps with the real loop."""
    torch.manual_seed(0)
    widths = {g: ARCH_WIDTHS[arch] for g in build_model(arch, input_size=16).groups()}
    vanilla = build_model(arch, in_channels=1, num_classes=4, input_size=16, widths=widths)
    train(vanilla, splits, TrainConfig(epochs=1, batch_size=32, progress=False, threads=1))
    save_checkpoint(tmp / "vanilla.pt", vanilla)
    spec = DataSpec("synthetic", input_size=16, synthetic=synthetic)
    settings = PruneSettings(criterion="l1", ratio=0.2, min_accuracy=0.0, retrain_epochs=0.25,
                             batch_size=32, min_retrain_steps=0)
    prune(vanilla, splits, PruneJob(tmp / "vanilla.pt", tmp / "prune", spec, settings),
          max_steps=3)
    return open_prune_run(tmp / "prune")


@pytest.fixture(scope="module")
def splits(tiny_synthetic: SyntheticConfig) -> DatasetSplits:
    return load_dataset("synthetic", synthetic=tiny_synthetic)


@pytest.fixture(scope="module", params=sorted(ARCH_WIDTHS))
def recovered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              splits: DatasetSplits, tiny_synthetic: SyntheticConfig) -> Recovered:
    tmp = tmp_path_factory.mktemp(request.param)
    run = prune_tiny(tmp, request.param, splits, tiny_synthetic)
    plan = plan_levels(run, choose_steps(run, 3))
    config = RecoveryConfig(epochs_per_level=0.5, batch_size=32, lr=0.02, threads=1,
                            progress=False)
    result = recover(run, plan, splits, tmp / "model.nest", config)
    return Recovered(run, plan, splits, config, result)


def bits(tensor: Tensor) -> Tensor:
    return tensor.contiguous().view(torch.int32)


def test_smaller_descendants_are_bitwise_slices_of_larger_ones(recovered: Recovered) -> None:
    path = recovered.result.path
    models = [load_descendant(path, k) for k in range(recovered.plan.num_levels)]
    nested_checked = 0
    for k, small in enumerate(models):
        for large in models[k + 1:]:
            axes, large_state = large.param_axes(), large.state_dict()
            for key, tensor in small.state_dict().items():
                if tensor.dim() < 2:
                    continue
                sliced = large_state[key][block_index(axes[key], small.groups())]
                assert torch.equal(bits(sliced), bits(tensor)), (k, key)
                nested_checked += 1
    assert nested_checked > 0


def test_recorded_accuracy_equals_accuracy_measured_from_the_file(recovered: Recovered) -> None:
    manifest = read_manifest(recovered.result.path)
    for k, info in enumerate(manifest.descendants):
        measured = evaluate(load_descendant(recovered.result.path, k), recovered.splits.val)
        assert info.val_accuracy == measured == recovered.result.levels[k].val_accuracy
        assert info.roadmap_step == recovered.plan.steps[k].step
    assert recovered.plan.steps[0].step == recovered.run.seed_step
    assert recovered.plan.steps[-1].step == 0


def test_new_channels_start_from_their_roadmap_weights(recovered: Recovered) -> None:
    run, plan = recovered.run, recovered.plan
    seed, _ = load_checkpoint(run.step_file(run.seed_step))
    level0 = level_start_model(plan, 0, None)
    for key, tensor in seed.state_dict().items():  # the seed is level 0 as it is
        assert torch.equal(level0.state_dict()[key], tensor), key
    previous = level0.state_dict()
    start = level_start_model(plan, 1, previous).state_dict()
    roadmap_model, _ = load_checkpoint(plan.files[1])
    kept = plan.steps[1].kept
    axes = roadmap_model.param_axes()
    for key, tensor in roadmap_model.state_dict().items():
        # Independently of the code under test: level position p of group g holds original
        # channel order[g][p], which the roadmap model stores at kept[g].index(original).
        expected = tensor
        for dim, group in enumerate(axes[key]):
            if group is not None:
                local = [kept[group].index(int(o)) for o in plan.order[group][: len(kept[group])]]
                expected = expected.index_select(dim, torch.tensor(local))
        if tensor.dim() < 2:
            assert torch.equal(start[key], expected), key  # per-descendant: all from the roadmap
            continue
        block = block_index(axes[key], plan.widths(0))
        new = torch.ones_like(expected, dtype=torch.bool)
        new[block] = False
        assert torch.equal(start[key][new], expected[new]), key
        assert torch.equal(start[key][block], previous[key]), key


def test_resuming_an_interrupted_recovery_writes_the_same_file(
    recovered: Recovered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "resumed.nest"
    calls = []

    def interrupted_train(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train(*args, **kwargs)

    monkeypatch.setattr(recovery.grow, "train", interrupted_train)
    with pytest.raises(KeyboardInterrupt):
        recover(recovered.run, recovered.plan, recovered.splits, out, recovered.config)
    work = work_dir_for(out)
    assert sorted(p.name for p in work.glob("level_*.pt")) == ["level_0.pt", "level_1.pt"]
    assert not out.exists()
    monkeypatch.undo()
    result = recover(recovered.run, recovered.plan, recovered.splits, out, recovered.config)
    assert [lv.resumed for lv in result.levels] == [True, True, False]
    assert read_manifest(out).descendants == read_manifest(recovered.result.path).descendants
    resumed, original = load_file(out), load_file(recovered.result.path)
    assert resumed.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(bits(resumed[name]), bits(tensor)) if tensor.is_floating_point() \
            else torch.equal(resumed[name], tensor), name


def test_a_work_dir_made_with_other_settings_is_refused(recovered: Recovered) -> None:
    changed = replace(recovered.config, lr=recovered.config.lr * 2)
    with pytest.raises(NestError, match=r"other settings \(recovery\)"):
        recover(recovered.run, recovered.plan, recovered.splits, recovered.result.path, changed)


def test_cli_recovers_explicit_steps_and_cleans_up(
    recovered: Recovered, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.nest"
    seed = recovered.run.seed_step
    code = main(["recover", "--prune-dir", str(recovered.run.directory), "--steps", f"0,{seed}",
                 "--epochs-per-level", "0.25", "--batch-size", "32", "--threads", "1",
                 "--no-progress", "--out", str(out)])
    assert code == 0
    manifest = read_manifest(out)
    assert [d.roadmap_step for d in manifest.descendants] == [seed, 0]
    # the seed is level 0 as pruned: same accuracy on the validation split the roadmap names
    assert manifest.descendants[0].val_accuracy == recovered.run.step(seed).val_accuracy
    assert not work_dir_for(out).exists()
    table = capsys.readouterr().out
    assert f"wrote {out}" in table and table.count("%") == 4  # val and re-read, two levels


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--descendants", "9"], "asked for 9 descendants but the roadmap has only 4 steps"),
        (["--steps", "0,7"], "step 7 is not in the roadmap"),
        (["--steps", "0,x"], "steps must be comma-separated integers"),
        (["--epochs-per-level", "0"], "epochs per level must be positive"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(
    recovered: Recovered, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    args: list[str], message: str,
) -> None:
    code = main(["recover", "--prune-dir", str(recovered.run.directory), *args,
                 "--out", str(tmp_path / "x.nest")])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert not (tmp_path / "x.nest").exists()


def test_cli_reports_a_missing_roadmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    code = main(["recover", "--prune-dir", str(tmp_path), "--out", str(tmp_path / "x.nest")])
    assert code == 2
    assert "no roadmap in" in capsys.readouterr().err


def test_distillation_loss_is_cross_entropy_when_student_matches_teacher() -> None:
    teacher = nn.Linear(5, 3)
    inputs, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    config = RecoveryConfig(distill=True, temperature=3.0, distill_weight=0.6)
    loss = distillation_loss(teacher, config)
    logits = teacher(inputs)
    expected = 0.4 * nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(loss(logits, labels, inputs), expected, atol=1e-6)
    assert loss(torch.zeros_like(logits), labels, inputs) > 0.4 * nn.functional.cross_entropy(
        torch.zeros_like(logits), labels)


def test_distilled_recovery_keeps_descendants_nested(recovered: Recovered, tmp_path: Path
                                                     ) -> None:
    plan = plan_levels(recovered.run, [recovered.run.seed_step, 0])
    config = replace(recovered.config, distill=True, epochs_per_level=0.25)
    result = recover(recovered.run, plan, recovered.splits, tmp_path / "kd.nest", config)
    assert result.file_accuracies == [level.val_accuracy for level in result.levels]
    assert read_manifest(result.path).extra["recovery"]["distill"] is True
