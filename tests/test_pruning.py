"""Pruning: TRR and L1 importance, the schedule, the prune-retrain loop, resume, `nestdnn prune`."""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from nestdnn.checkpoint import load_checkpoint, save_checkpoint
from nestdnn.cli import main
from nestdnn.data import DatasetSplits, DataSpec, SyntheticConfig, load_dataset
from nestdnn.errors import NestError
from nestdnn.models import NestNet, build_model
from nestdnn.training import TrainConfig, evaluate, train
from pruning import prune as prune_module
from pruning.importance import L1, TRR, sample_triplets
from pruning.prune import PruneJob, channels_to_keep, next_widths, prune, scheduled_width
from pruning.roadmap import PruneSettings, Roadmap, load_roadmap

SYNTHETIC = SyntheticConfig(
    num_classes=4, in_channels=1, input_size=16, train_size=600, test_size=120
)
DATASET_SPEC = DataSpec("synthetic", synthetic=SYNTHETIC)


def tiny(arch: str = "vgg11") -> NestNet:
    """VGG-11 at 1/16 width (4..32 channels) or ResNet-20 at 1/4 (4, 8, 16 channels)."""
    width_mult = 0.0625 if arch.startswith("vgg") else 0.25
    return build_model(arch, in_channels=1, num_classes=4, input_size=16, width_mult=width_mult)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tests' models are tiny: one thread is fastest, and stays fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits() -> DatasetSplits:
    return load_dataset("synthetic", synthetic=SYNTHETIC)


def trained(arch: str, splits: DatasetSplits, epochs: float) -> NestNet:
    torch.manual_seed(0)
    model = tiny(arch)
    train(model, splits, TrainConfig(epochs=epochs, progress=False, threads=1))
    return model.eval()


@pytest.fixture(scope="module")
def vgg(splits: DatasetSplits) -> NestNet:
    return trained("vgg11", splits, epochs=8)


@pytest.fixture(scope="module")
def resnet(splits: DatasetSplits) -> NestNet:
    return trained("resnet20", splits, epochs=2)


@pytest.fixture(scope="module")
def vanilla_file(vgg: NestNet, splits: DatasetSplits, tmp_path_factory: pytest.TempPathFactory):
    """The trained VGG as `nestdnn train` writes it (metadata saying how to reload its data)."""
    path = tmp_path_factory.mktemp("vanilla") / "vanilla.pt"
    save_checkpoint(
        path,
        vgg,
        dataset="synthetic",
        data_dir=None,
        class_names=list(splits.class_names),
        mean=list(splits.mean),
        std=list(splits.std),
        val_fraction=0.1,
        seed=0,
        synthetic_samples=SYNTHETIC.train_size,
        val_accuracy=evaluate(vgg, splits.val),
    )
    return path


def settings(**changes: object) -> PruneSettings:
    base = {
        "criterion": "trr",
        "ratio": 0.25,
        "min_accuracy": 0.0,
        "retrain_epochs": 0.5,
        "triplets": 32,
        "batch_size": 64,
        "lr": 0.05,
        "min_retrain_steps": 0,
    }
    return PruneSettings(**{**base, **changes})  # type: ignore[arg-type]


def job_for(path: Path, out: Path, **changes: object) -> PruneJob:
    return PruneJob(path, out, DATASET_SPEC, settings(**changes), threads=1)


# --- TRR and L1 ------------------------------------------------------------------------------


def reference_trr(model: NestNet, images: Tensor, labels: Tensor, count: int) -> dict[str, Tensor]:
    """TRR written plainly: one image per forward pass, loops over triplets and channels."""
    triplets = sample_triplets(labels, count, seed=0)
    responses: dict[nn.Module, Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, _i, out: responses.__setitem__(mod, out[0]))
        for mods in model.response_modules().values()
        for m in mods
    ]

    def features(index: int) -> dict[str, list[Tensor]]:
        """Per group, per channel: the concatenated flattened responses of every layer."""
        responses.clear()
        with torch.no_grad():
            model(images[index : index + 1])
        return {
            group: [torch.cat([responses[m][c].flatten() for m in mods]) for c in range(width)]
            for (group, mods), width in zip(
                model.response_modules().items(), model.groups().values(), strict=True
            )
        }

    scores = {g: torch.zeros(w, dtype=torch.float64) for g, w in model.groups().items()}
    model.eval()
    for t in range(count):
        anchor = features(int(triplets.anchor[t]))
        positive = features(int(triplets.positive[t]))
        negative = features(int(triplets.negative[t]))
        for group, width in model.groups().items():
            for c in range(width):
                far = float(((anchor[group][c] - negative[group][c]) ** 2).sum())
                near = float(((anchor[group][c] - positive[group][c]) ** 2).sum())
                scores[group][c] += far - near
    for handle in handles:
        handle.remove()
    return scores


@pytest.mark.parametrize("arch", ["vgg11", "resnet20"])
def test_trr_matches_plain_reference(arch: str, splits: DatasetSplits) -> None:
    torch.manual_seed(1)
    model = tiny(arch).eval()
    images, labels = splits.train.tensors
    expected = reference_trr(model, images, labels, count=7)
    got = TRR(triplets=7, seed=0, batch_size=3).scores(model, splits.train)
    assert got.keys() == expected.keys()
    for group in expected:
        scale = float(expected[group].abs().max())
        torch.testing.assert_close(got[group], expected[group], rtol=1e-4, atol=1e-5 * scale)


def test_triplets_are_balanced_reproducible_and_valid(splits: DatasetSplits) -> None:
    labels = splits.train.tensors[1]
    triplets = sample_triplets(labels, 48, seed=3)
    a, p, n = labels[triplets.anchor], labels[triplets.positive], labels[triplets.negative]
    assert torch.equal(a, p) and bool((a != n).all())
    assert bool((triplets.anchor != triplets.positive).all())
    assert torch.bincount(a).tolist() == [12, 12, 12, 12]
    pairs = torch.bincount(a * 4 + n, minlength=16).view(4, 4)
    assert pairs.diagonal().sum() == 0
    assert set((pairs + torch.eye(4, dtype=torch.long) * 4).flatten().tolist()) == {4}
    again = sample_triplets(labels, 48, seed=3)
    assert torch.equal(triplets.anchor, again.anchor)
    assert torch.equal(triplets.negative, again.negative)


def copy_channel(model: NestNet, group: str, source: int, target: int) -> None:
    """Make channel `target` of a VGG group an exact copy of channel `source`."""
    conv, bn = model.get_submodule(group), model.get_submodule(model.norms()[group][0])
    with torch.no_grad():
        for tensor in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var):
            tensor[target] = tensor[source]


def test_copied_channel_has_equal_trr(vgg: NestNet, splits: DatasetSplits) -> None:
    model = copy.deepcopy(vgg)
    copy_channel(model, "features.4", source=2, target=5)
    scores = TRR(triplets=32).scores(model, splits.train)["features.4"]
    assert scores[2] != 0
    torch.testing.assert_close(scores[5], scores[2], rtol=1e-6, atol=0.0)


def silence_channel(model: NestNet, group: str, channel: int) -> None:
    """Zero a VGG channel's filter and bias and its BN shift: its response becomes constant."""
    conv, bn = model.get_submodule(group), model.get_submodule(model.norms()[group][0])
    with torch.no_grad():
        conv.weight[channel] = 0
        conv.bias[channel] = 0
        bn.bias[channel] = 0


@pytest.mark.parametrize("criterion", ["trr", "l1"])
def test_constant_channel_scores_zero_and_is_pruned_first(
    criterion: str, vgg: NestNet, splits: DatasetSplits, tmp_path: Path
) -> None:
    model = copy.deepcopy(vgg)
    group, channel = "features.4", 3
    silence_channel(model, group, channel)
    scorer = TRR(triplets=32) if criterion == "trr" else L1()
    scores = scorer.scores(model, splits.train)[group]
    assert scores[channel] == 0
    others = torch.cat([scores[:channel], scores[channel + 1 :]])
    assert bool((others > 0).all()), "precondition: every other channel matters"
    path = tmp_path / "silenced.pt"
    save_checkpoint(path, model)
    roadmap = prune(
        model,
        splits,
        job_for(path, tmp_path / "out", criterion=criterion, ratio=0.125),
        max_steps=1,
    )
    kept = roadmap.steps[1].kept[group]
    assert len(kept) == model.groups()[group] - 1
    assert channel not in kept


def test_l1_sums_each_producers_filter_norms(resnet: NestNet, splits: DatasetSplits) -> None:
    scores = L1().scores(resnet, splits.train)
    conv1 = resnet.get_submodule("conv1").weight.detach().abs().sum(dim=(1, 2, 3))
    layer1 = conv1 + sum(
        resnet.get_submodule(f"layer1.{b}.conv2").weight.detach().abs().sum(dim=(1, 2, 3))
        for b in range(3)
    )
    torch.testing.assert_close(scores["layer1"], layer1.double())
    inner = resnet.get_submodule("layer2.1.conv1").weight.detach().abs().sum(dim=(1, 2, 3))
    torch.testing.assert_close(scores["layer2.1.conv1"], inner.double())


# --- the schedule ------------------------------------------------------------------------------


def test_schedule_removes_ratio_of_original_width_with_rounding_and_floors() -> None:
    assert [scheduled_width(16, round(1 - s * 0.1, 9), 1) for s in range(11)] == [
        16,
        14,
        13,
        11,
        10,
        8,
        6,
        5,
        3,
        2,
        1,
    ]
    assert [scheduled_width(32, 1 - s * 0.25, 8) for s in range(5)] == [32, 24, 16, 8, 8]
    assert scheduled_width(6, 0.5, 8) == 6  # narrower than round_to: stays whole
    # A step that would shrink nothing is skipped; a group at its floor stays.
    assert next_widths({"a": 4}, {"a": 4}, 1.0, 0.1, 1) == (0.8, {"a": 3})
    assert next_widths({"a": 16, "b": 2}, {"a": 14, "b": 2}, 0.9, 0.1, 1) == (
        0.8,
        {"a": 13, "b": 2},
    )
    assert next_widths({"a": 16, "b": 2}, {"a": 2, "b": 1}, 0.1, 0.1, 1) == (
        0.0,
        {"a": 1, "b": 1},
    )
    assert next_widths({"a": 16, "b": 2}, {"a": 1, "b": 1}, 0.0, 0.1, 1) is None
    # Many small steps land exactly where one big one does (no drift from repeated subtraction).
    fraction, widths = 1.0, {"a": 50}
    for _ in range(3):
        fraction, widths = next_widths({"a": 50}, widths, fraction, 0.1, 1)  # type: ignore[misc]
    assert (fraction, widths) == (0.7, {"a": 35})


def test_channels_to_keep_drops_lowest_scores_and_keeps_ascending_order() -> None:
    scores = torch.tensor([0.5, -1.0, 3.0, 0.5, 2.0], dtype=torch.float64)
    assert channels_to_keep(scores, 3).tolist() == [0, 2, 4]
    assert channels_to_keep(scores, 4).tolist() == [0, 2, 3, 4]


# --- the loop ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_run(
    vanilla_file: Path,
    vgg: NestNet,
    splits: DatasetSplits,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Roadmap, Path]:
    out = tmp_path_factory.mktemp("vgg_run")
    min_accuracy = evaluate(vgg, splits.val) - 0.2
    job = job_for(vanilla_file, out, min_accuracy=min_accuracy, ratio=0.125, retrain_epochs=1.0)
    roadmap = prune(vgg, splits, job, max_steps=4)
    return roadmap, out


def test_roadmap_widths_shrink_and_kept_channels_nest(vgg_run: tuple[Roadmap, Path]) -> None:
    roadmap, out = vgg_run
    assert load_roadmap(out).to_dict() == roadmap.to_dict()
    assert len(roadmap.steps) >= 3, "precondition: at least two pruning steps met the minimum"
    assert roadmap.steps[0].widths == roadmap.model_config["widths"]
    for earlier, later in zip(roadmap.steps, roadmap.steps[1:], strict=False):
        assert later.total_width < earlier.total_width
        assert later.params < earlier.params and later.macs < earlier.macs
        for group, kept in later.kept.items():
            assert kept == sorted(kept) and len(kept) == later.widths[group]
            assert set(kept) <= set(earlier.kept[group])
            assert later.widths[group] <= earlier.widths[group]
    for step in roadmap.steps:
        model, meta = load_checkpoint(out / step.file)
        assert model.groups() == step.widths
        assert meta["kept"] == step.kept and meta["roadmap_step"] == step.step
        assert model.count_params() == step.params


def test_seed_meets_min_accuracy_and_is_the_last_step(
    vgg_run: tuple[Roadmap, Path], splits: DatasetSplits
) -> None:
    roadmap, out = vgg_run
    seed = roadmap.steps[roadmap.seed_step]
    assert roadmap.seed_step == len(roadmap.steps) - 1
    assert all(s.val_accuracy >= roadmap.settings.min_accuracy for s in roadmap.steps)
    assert (out / "seed.pt").read_bytes() == (out / seed.file).read_bytes()
    model, _ = load_checkpoint(out / "seed.pt")
    assert evaluate(model, splits.val) == pytest.approx(seed.val_accuracy)
    written = json.loads((out / "roadmap.json").read_text())
    assert written["seed_step"] == seed.step and written["stopped"] in ("max_steps", "min_accuracy")


def test_load_roadmap_rejects_inconsistent_files(
    vgg_run: tuple[Roadmap, Path], tmp_path: Path
) -> None:
    data = vgg_run[0].to_dict()
    path = tmp_path / "roadmap.json"
    last = len(data["steps"]) - 1  # tamper with the last step: no later step depends on it
    previous, final = data["steps"][last - 1]["kept"], data["steps"][last]["kept"]
    group = next(g for g in previous if len(previous[g]) < data["model_config"]["widths"][g])
    gone = min(set(range(data["model_config"]["widths"][group])) - set(previous[group]))
    tampered = copy.deepcopy(data)
    tampered["steps"][last]["kept"][group] = sorted([*final[group][1:], gone])
    path.write_text(json.dumps(tampered))
    with pytest.raises(NestError, match=f"step {last}: group {group} keeps channels the previous"):
        load_roadmap(path)
    tampered = copy.deepcopy(data)
    tampered["steps"][1]["kept"] = "all"
    path.write_text(json.dumps(tampered))
    with pytest.raises(NestError, match="'kept' must map groups to lists"):
        load_roadmap(path)
    path.write_text(json.dumps(data)[:-20])
    with pytest.raises(NestError, match="cannot read roadmap"):
        load_roadmap(path)


def test_first_step_below_min_accuracy_is_discarded(
    vanilla_file: Path, vgg: NestNet, splits: DatasetSplits, tmp_path: Path, monkeypatch
) -> None:
    vanilla_accuracy = evaluate(vgg, splits.val)
    accuracies = iter([vanilla_accuracy - 0.01, vanilla_accuracy - 0.04, vanilla_accuracy - 0.2])
    monkeypatch.setattr(prune_module, "_fine_tune", lambda *_args: next(accuracies))
    no_retry = {"ratio": 0.25, "min_ratio": 0.25}
    job = job_for(vanilla_file, tmp_path, min_accuracy=vanilla_accuracy - 0.05, **no_retry)
    roadmap = prune(vgg, splits, job)
    assert [s.step for s in roadmap.steps] == [0, 1, 2]
    assert roadmap.stopped == "min_accuracy" and roadmap.seed_step == 2
    assert [a.accepted for a in roadmap.attempts] == [True, True, False]
    assert not (tmp_path / "step_03.pt").exists()
    assert (tmp_path / "seed.pt").read_bytes() == (tmp_path / "step_02.pt").read_bytes()


def test_a_step_below_min_accuracy_is_retried_at_halved_ratios_down_to_the_floor(
    vanilla_file: Path, vgg: NestNet, splits: DatasetSplits, tmp_path: Path, monkeypatch
) -> None:
    # Fine-tuning "succeeds" while the model keeps at least 55 % of the channels.
    full = sum(vgg.groups().values())
    monkeypatch.setattr(
        prune_module,
        "_fine_tune",
        lambda model, *_args: 0.9 if sum(model.groups().values()) >= 0.55 * full else 0.1,
    )
    job = job_for(vanilla_file, tmp_path, ratio=0.2, min_ratio=0.05, min_accuracy=0.5)
    roadmap = prune(vgg, splits, job)
    assert roadmap.stopped == "min_accuracy"
    attempts = roadmap.attempts
    assert [a.accepted for a in attempts].count(False) >= 2, "precondition: some retries"
    # Every try is recorded; kept tries became the steps, in order, at their fractions.
    kept = [a for a in attempts if a.accepted]
    assert [a.step for a in kept] == [s.step for s in roadmap.steps[1:]]
    assert [a.fraction for a in kept] == [s.fraction for s in roadmap.steps[1:]]
    assert [a.widths for a in kept] == [s.widths for s in roadmap.steps[1:]]
    assert all((a.val_accuracy >= 0.5) == a.accepted for a in attempts)
    # After a discarded try the ratio halves (a halving that prunes the same is skipped),
    # after a kept one it stays; no try goes below the floor; the last one failed at it.
    for before, after in itertools.pairwise(attempts):
        if before.accepted:
            assert after.ratio == before.ratio
        else:
            assert after.step == before.step and after.ratio <= before.ratio / 2
            assert after.widths != before.widths
    assert min(a.ratio for a in attempts) == pytest.approx(0.05)
    assert not attempts[-1].accepted and attempts[-1].ratio == pytest.approx(0.05)
    assert load_roadmap(tmp_path).to_dict() == roadmap.to_dict()
    assert roadmap.last.total_width >= 0.55 * full
    assert roadmap.last.total_width < 0.8 * full  # went beyond the first failure at ratio 0.2


def test_a_retry_holds_back_groups_that_rounding_can_only_halve(
    vanilla_file: Path, vgg: NestNet, splits: DatasetSplits, tmp_path: Path, monkeypatch
) -> None:
    # At --round-to 4 an 8-wide group can only halve: every smaller ratio rounds to the same
    # cut. Fine-tuning "fails" whenever an 8-wide group is cut; the others must go on.
    original = vgg.groups()
    narrow = {g for g, w in original.items() if w == 8}
    assert narrow and any(w > 8 for w in original.values()), "precondition: mixed widths"
    monkeypatch.setattr(
        prune_module,
        "_fine_tune",
        lambda model, *_args: 0.1 if any(model.groups()[g] < 8 for g in narrow) else 0.9,
    )
    job = job_for(vanilla_file, tmp_path, ratio=0.25, round_to=4, min_accuracy=0.5)
    roadmap = prune(vgg, splits, job)
    last = roadmap.last.widths
    assert all(last[g] == 8 for g in narrow)  # held back from the first failure on
    assert all(last[g] == 4 for g in original if g not in narrow)  # the rest went to the floor
    assert roadmap.stopped == "min_width"
    failed = [a for a in roadmap.attempts if not a.accepted]
    assert failed and all(any(a.widths[g] < 8 for g in narrow) for a in failed)


def test_roadmaps_from_before_retries_still_load(vgg_run: tuple[Roadmap, Path]) -> None:
    roadmap, _ = vgg_run
    old = roadmap.to_dict()
    for key in ("attempts", "min_retrain_steps", "min_ratio"):
        del old[key]
    for step in old["steps"]:
        del step["fraction"]
    loaded = Roadmap.from_dict(old)
    assert loaded.attempts == [] and loaded.settings.min_retrain_steps == 0
    assert loaded.settings.ratio_floor == loaded.settings.ratio  # it never retried
    assert [s.widths for s in loaded.steps] == [s.widths for s in roadmap.steps]
    # Its constant-ratio schedule points are found again from the widths.
    assert [prune_module.fraction_of(loaded, s) for s in loaded.steps] == [
        s.fraction for s in roadmap.steps
    ]


def test_runs_until_no_group_can_shrink(
    vanilla_file: Path, vgg: NestNet, splits: DatasetSplits, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(prune_module, "_fine_tune", lambda *_args: 1.0)
    roadmap = prune(vgg, splits, job_for(vanilla_file, tmp_path, ratio=0.4, triplets=4))
    assert roadmap.stopped == "min_width"
    assert set(roadmap.last.widths.values()) == {1}


def masked_copy(model: NestNet, keep: dict[str, Tensor]) -> NestNet:
    """The model with every dropped channel silenced in all its producers and batch norms."""
    masked = copy.deepcopy(model).eval()
    with torch.no_grad():
        for group, kept in keep.items():
            dropped = torch.ones(model.groups()[group], dtype=torch.bool)
            dropped[kept] = False
            for name in model.producers()[group]:
                masked.get_submodule(name).weight[dropped] = 0
            for name in model.norms()[group]:
                masked.get_submodule(name).weight[dropped] = 0
                masked.get_submodule(name).bias[dropped] = 0
    return masked


def test_resnet_pruning_keeps_coupled_channels_coupled(
    resnet: NestNet, splits: DatasetSplits, tmp_path: Path
) -> None:
    # Extracting the chosen channels computes exactly what the full model computes with the
    # dropped channels silenced everywhere they meet (stem, residual adds, shortcuts).
    scores = TRR(triplets=16).scores(resnet, splits.train)
    found = next_widths(resnet.groups(), resnet.groups(), 1.0, 0.25, 1)
    assert found is not None
    targets = found[1]
    keep = {g: channels_to_keep(scores[g], targets[g]) for g in targets}
    images = splits.val.tensors[0][:8]
    with torch.no_grad():
        torch.testing.assert_close(
            resnet.extract(keep).eval()(images), masked_copy(resnet, keep)(images)
        )
    path = tmp_path / "resnet.pt"
    save_checkpoint(path, resnet)
    roadmap = prune(resnet, splits, job_for(path, tmp_path / "out", triplets=16), max_steps=3)
    assert len(roadmap.steps) == 4
    for step in roadmap.steps:
        model, _ = load_checkpoint(tmp_path / "out" / step.file)
        assert model.groups() == step.widths
        for key, tensor in model.state_dict().items():
            for dim, group in enumerate(model.param_axes()[key]):
                if group is not None:
                    assert tensor.shape[dim] == step.widths[group], key
        assert model(images).shape == (8, 4)


# --- resume ------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def test_resume_after_interruption_gives_the_same_roadmap(
    vanilla_file: Path, vgg: NestNet, splits: DatasetSplits, tmp_path: Path, monkeypatch
) -> None:
    whole = prune(vgg, splits, job_for(vanilla_file, tmp_path / "whole"), max_steps=3)

    # Killed while fine-tuning step 2: steps 0 and 1 are on disk, the roadmap is unfinished.
    real_fine_tune = prune_module._fine_tune

    def crash_at_step_2(model, data, config, step, progress):  # type: ignore[no-untyped-def]
        if step == 2:
            raise Interrupted
        return real_fine_tune(model, data, config, step, progress)

    monkeypatch.setattr(prune_module, "_fine_tune", crash_at_step_2)
    job = job_for(vanilla_file, tmp_path / "resumed")
    with pytest.raises(Interrupted):
        prune(vgg, splits, job, max_steps=3)
    partial = load_roadmap(tmp_path / "resumed")
    assert [s.step for s in partial.steps] == [0, 1] and partial.stopped is None
    monkeypatch.undo()

    # Stopped by --max-steps 2, then continued with --max-steps 3.
    assert prune(vgg, splits, job, max_steps=2).stopped == "max_steps"
    resumed = prune(vgg, splits, job, max_steps=3)
    assert resumed.to_dict() == whole.to_dict()
    for step in whole.steps:
        ours, _ = load_checkpoint(tmp_path / "resumed" / step.file)
        theirs, _ = load_checkpoint(tmp_path / "whole" / step.file)
        for key, tensor in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], tensor), key
    # A finished run is left as it is.
    assert prune(vgg, splits, job, max_steps=3).to_dict() == whole.to_dict()


def test_resume_refuses_other_settings(
    vgg_run: tuple[Roadmap, Path], vanilla_file: Path, vgg: NestNet, splits: DatasetSplits
) -> None:
    roadmap, out = vgg_run
    before = (out / "roadmap.json").read_text()
    job = job_for(vanilla_file, out, min_accuracy=roadmap.settings.min_accuracy, retrain_epochs=1.0)
    with pytest.raises(NestError, match=r"different settings \(ratio was 0.125, now 0.25\)"):
        prune(vgg, splits, job, max_steps=5)
    assert (out / "roadmap.json").read_text() == before


# --- `nestdnn prune` ---------------------------------------------------------------------------


def run_cli(*args: str | Path) -> int:
    return main(["prune", "--no-progress", "--threads", "1", *map(str, args)])


def test_cli_prunes_and_prints_a_line_per_step(
    vanilla_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = run_cli(
        "--model", vanilla_file, "--dataset", "synthetic", "--criterion", "l1",
        "--min-accuracy", "0.1", "--ratio", "0.3", "--retrain-epochs", "0.25",
        "--max-steps", "2", "--out", out,
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert [line.split(":")[0] for line in printed.splitlines()] == [
        "step  0", "step  1", "step  2", "seed"
    ]  # fmt: skip
    roadmap = load_roadmap(out)
    assert roadmap.settings.criterion == "l1" and roadmap.stopped == "max_steps"
    assert roadmap.dataset.synthetic.train_size == SYNTHETIC.train_size
    _, meta = load_checkpoint(out / "seed.pt")
    assert meta["dataset"] == "synthetic" and meta["class_names"] == list(SYNTHETIC_NAMES)


SYNTHETIC_NAMES = tuple(f"class{i}" for i in range(SYNTHETIC.num_classes))


def test_cli_prunes_a_trained_model_on_the_split_it_was_trained_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_args = [
        "train", "--arch", "vgg11", "--width-mult", "0.0625", "--dataset", "synthetic",
        "--input-size", "16", "--synthetic-classes", "3", "--synthetic-channels", "1",
        "--synthetic-samples", "300", "--val-fraction", "0.2", "--seed", "4", "--epochs", "2",
        "--batch-size", "32", "--threads", "1", "--no-progress", "--out", tmp_path,
    ]  # fmt: skip
    assert main(list(map(str, train_args))) == 0
    _, meta = load_checkpoint(tmp_path / "vanilla.pt")
    code = run_cli(
        "--model", tmp_path / "vanilla.pt", "--dataset", "synthetic", "--min-accuracy", "0",
        "--max-steps", "1", "--retrain-epochs", "0.5", "--out", tmp_path / "prune",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    roadmap = load_roadmap(tmp_path / "prune")
    # The same validation split (not a re-drawn one) gives the vanilla the same accuracy.
    assert roadmap.steps[0].val_accuracy == meta["val_accuracy"]
    assert roadmap.dataset.val_fraction == 0.2 and roadmap.dataset.seed == 4
    assert roadmap.dataset.synthetic.train_size == 300


def imagefolder(root: Path, classes: int) -> Path:
    """A tiny grey ImageFolder tree of 16x16 images."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 255, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min-accuracy", "0.999"], "is above the vanilla model's validation accuracy"),
        (["--min-accuracy", "0.1", "--ratio", "0"], r"--ratio must be in \(0, 1\), got 0.0"),
        (["--min-accuracy", "0.1", "--ratio", "1.5"], r"--ratio must be in \(0, 1\), got 1.5"),
        (["--min-accuracy", "90"], r"--min-accuracy must be in \[0, 1\]"),
        (["--min-accuracy", "0.1", "--dataset", "cifar10"], "trained on synthetic, not cifar10"),
        (["--min-accuracy", "0.1", "--criterion", "size"], "invalid choice: 'size'"),
    ],
)
def test_cli_rejects_bad_input_and_writes_nothing(
    flags: list[str],
    message: str,
    vanilla_file: Path,
    vgg: NestNet,
    splits: DatasetSplits,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if "0.999" in flags:
        assert evaluate(vgg, splits.val) < 0.999, "precondition: the vanilla is not perfect"
    out = tmp_path / "out"
    code = run_cli("--model", vanilla_file, "--dataset", "synthetic", *flags, "--out", out)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert re.search(message, error), error
    assert not out.exists()


@pytest.mark.parametrize(
    ("in_channels", "num_classes", "message"),
    [(3, 2, "input channels 3 vs 1"), (1, 4, "classes 4 vs 2")],
)
def test_cli_rejects_a_model_that_does_not_fit_the_data(
    in_channels: int,
    num_classes: int,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = build_model(
        "vgg11", in_channels=in_channels, num_classes=num_classes, input_size=16, width_mult=0.0625
    )
    save_checkpoint(tmp_path / "model.pt", model)
    data = imagefolder(tmp_path / "images", classes=2)
    out = tmp_path / "out"
    code = run_cli(
        "--model", tmp_path / "model.pt", "--dataset", "imagefolder", "--data-dir", data,
        "--min-accuracy", "0", "--out", out,
    )  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2
    assert "does not fit data set imagefolder" in error and message in error, error
    assert not out.exists()
