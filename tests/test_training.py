"""The shared training loop, evaluation, augmentation, and checkpoint files."""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import TensorDataset

from nestdnn.checkpoint import load_checkpoint, save_checkpoint
from nestdnn.data import DatasetSplits, SyntheticConfig, load_dataset
from nestdnn.errors import NestError
from nestdnn.models import NestNet, build_model
from nestdnn.training import TrainConfig, evaluate, random_crop, random_flip, train


def small_model(splits: DatasetSplits, seed: int = 0) -> NestNet:
    torch.manual_seed(seed)
    return build_model(
        "vgg11",
        in_channels=splits.in_channels,
        num_classes=splits.num_classes,
        input_size=splits.input_size,
        width_mult=0.125,
    )


@pytest.fixture(scope="module")
def tiny_splits(tiny_synthetic: SyntheticConfig) -> DatasetSplits:
    return load_dataset("synthetic", synthetic=tiny_synthetic, seed=0)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


# --- training --------------------------------------------------------------------------------


def test_training_on_synthetic_data_reaches_90_percent() -> None:
    config = SyntheticConfig(
        num_classes=10, in_channels=3, input_size=16, train_size=2000, test_size=500
    )
    splits = load_dataset("synthetic", synthetic=config, seed=1)
    model = small_model(splits)
    result = train(model, splits, TrainConfig(threads=1, epochs=3, batch_size=64, lr=0.05))
    assert len(result.history) == 3
    assert result.history[-1].loss < result.history[0].loss
    assert evaluate(model, splits.test) >= 0.90


def test_same_seed_gives_the_same_weights(tiny_splits: DatasetSplits) -> None:
    config = TrainConfig(threads=1, epochs=0.5, batch_size=32, augment=True, seed=5)
    first, second = small_model(tiny_splits), small_model(tiny_splits)
    train(first, tiny_splits, config)
    train(second, tiny_splits, config)
    assert same_weights(first, second)


def test_fractional_epochs_run_a_prefix_of_the_batches(tiny_splits: DatasetSplits) -> None:
    steps_per_epoch = len(tiny_splits.train) // 32
    calls: list[int] = []
    result = train(
        small_model(tiny_splits),
        tiny_splits,
        TrainConfig(threads=1, epochs=1.5, batch_size=32),
        after_step=lambda: calls.append(1),
    )
    expected = math.ceil(1.5 * steps_per_epoch)
    assert len(calls) == result.steps == expected
    assert [epoch.steps for epoch in result.history] == [
        steps_per_epoch,
        expected - steps_per_epoch,
    ]


def test_min_steps_sets_a_floor_on_optimizer_steps(tiny_splits: DatasetSplits) -> None:
    steps_per_epoch = len(tiny_splits.train) // 32
    calls: list[int] = []
    config = TrainConfig(threads=1, epochs=0.1, batch_size=32, min_steps=2 * steps_per_epoch + 3)
    model = small_model(tiny_splits)
    result = train(model, tiny_splits, config, after_step=lambda: calls.append(1))
    assert len(calls) == result.steps == 2 * steps_per_epoch + 3
    assert [epoch.steps for epoch in result.history] == [steps_per_epoch, steps_per_epoch, 3]
    assert result.epochs == pytest.approx(result.steps / steps_per_epoch)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_float32_weights(
    tiny_splits: DatasetSplits, tmp_path: Path, amp: str
) -> None:
    state = tmp_path / "state.pt"
    config = TrainConfig(threads=1, epochs=2, batch_size=32, amp=amp, device="cpu",
                         checkpoint_path=str(state))  # fmt: skip
    model = small_model(tiny_splits)
    result = train(model, tiny_splits, config)
    assert result.amp == amp and result.device == "cpu"
    assert result.history[-1].loss < result.history[0].loss
    assert all(p.dtype == torch.float32 for p in model.parameters())
    saved = torch.load(state, weights_only=True)["scaler"]
    assert bool(saved) == (amp == "fp16")  # the fp16 loss scale is part of the state
    # precision is how, not what: a run resumes under another setting
    resumed = train(small_model(tiny_splits), tiny_splits, replace(config, amp="off"))
    assert resumed.resumed_epochs == 2


def test_training_on_a_streamed_image_folder_is_reproducible(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label in range(3):
        (tmp_path / f"c{label}").mkdir()
        for i in range(24):
            pixels = np.clip(rng.normal(60 + 70 * label, 30, (12, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(tmp_path / f"c{label}" / f"{i}.png")
    splits = load_dataset("imagefolder", tmp_path, streaming=True, workers=2)
    config = TrainConfig(threads=1, epochs=3, batch_size=16, augment=True, lr=0.05, seed=2)
    first, second = small_model(splits), small_model(splits)
    result = train(first, splits, config)
    train(second, splits, config)
    assert same_weights(first, second)  # seeded workers augment alike
    assert result.history[-1].loss < result.history[0].loss
    assert evaluate(first, splits.val) == result.val_accuracy


def test_custom_loss_receives_logits_labels_and_inputs(tiny_splits: DatasetSplits) -> None:
    seen: list[tuple[torch.Size, torch.Size, torch.Size]] = []

    def loss_fn(logits: Tensor, labels: Tensor, inputs: Tensor) -> Tensor:
        seen.append((logits.shape, labels.shape, inputs.shape))
        return F.cross_entropy(logits, labels)

    train(
        small_model(tiny_splits),
        tiny_splits,
        TrainConfig(threads=1, epochs=0.25, batch_size=50),
        loss_fn=loss_fn,
    )
    assert seen and seen[0] == ((50, 4), (50,), (50, 1, 16, 16))


def test_interrupted_training_resumes_where_it_stopped(
    tiny_splits: DatasetSplits, tmp_path: Path
) -> None:
    state = tmp_path / "state.pt"
    config = TrainConfig(threads=1, epochs=2, batch_size=40, seed=3, checkpoint_path=str(state))
    steps_per_epoch = len(tiny_splits.train) // 40

    uninterrupted = small_model(tiny_splits)
    train(uninterrupted, tiny_splits, TrainConfig(threads=1, epochs=2, batch_size=40, seed=3))

    steps = 0

    def interrupt_in_second_epoch() -> None:
        nonlocal steps
        steps += 1
        if steps == steps_per_epoch + 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_model(tiny_splits), tiny_splits, config, after_step=interrupt_in_second_epoch)
    resumed = small_model(tiny_splits, seed=99)  # weights come from the state file
    result = train(resumed, tiny_splits, config)
    assert result.resumed_epochs == 1
    assert [epoch.epoch for epoch in result.history] == [1, 2]
    assert same_weights(resumed, uninterrupted)


def test_resuming_with_other_settings_is_refused(
    tiny_splits: DatasetSplits, tmp_path: Path
) -> None:
    state = str(tmp_path / "state.pt")
    train(
        small_model(tiny_splits),
        tiny_splits,
        TrainConfig(threads=1, epochs=0.25, checkpoint_path=state),
    )
    with pytest.raises(NestError, match=r"different settings or data \(lr\)"):
        train(
            small_model(tiny_splits),
            tiny_splits,
            TrainConfig(threads=1, epochs=0.25, lr=0.1, checkpoint_path=state),
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("batch_size", 0), ("lr", -1.0), ("schedule", "step"), ("label_smoothing", 1)],
)
def test_bad_train_config_is_rejected(
    tiny_splits: DatasetSplits, field: str, value: object
) -> None:
    with pytest.raises(NestError):
        train(small_model(tiny_splits), tiny_splits, TrainConfig(**{field: value}))


# --- evaluation ------------------------------------------------------------------------------


def test_evaluate_counts_correct_predictions_and_restores_mode() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.stack([x[:, 0], -x[:, 0]], dim=1)  # class 0 iff x > 0

    model = Fixed().train()
    x = torch.tensor([[1.0], [-1.0], [2.0], [-3.0], [4.0]])
    y = torch.tensor([0, 1, 1, 1, 0])
    assert evaluate(model, TensorDataset(x, y), batch_size=2) == pytest.approx(4 / 5)
    assert model.training


def test_evaluate_on_empty_data_is_an_error(tiny_splits: DatasetSplits) -> None:
    empty = TensorDataset(torch.empty(0, 1, 16, 16), torch.empty(0, dtype=torch.int64))
    with pytest.raises(NestError, match="empty"):
        evaluate(small_model(tiny_splits), empty)


# --- augmentation ----------------------------------------------------------------------------


def test_random_crop_takes_a_window_of_the_padded_image() -> None:
    x = torch.randn(6, 2, 5, 5)
    fill = torch.tensor([-1.0, -2.0])
    out = random_crop(x, 2, fill, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = fill.view(1, 2, 1, 1).repeat(6, 1, 9, 9)
    padded[:, :, 2:7, 2:7] = x
    for i in range(6):
        windows = [padded[i, :, r : r + 5, c : c + 5] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_random_flip_flips_some_samples_horizontally() -> None:
    x = torch.randn(64, 1, 4, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, s.flip(2)) for o, s in zip(out, x, strict=True)]
    kept = [torch.equal(o, s) for o, s in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 64


# --- checkpoints -----------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tiny_splits: DatasetSplits, tmp_path: Path) -> tuple[Path, NestNet]:
    model = small_model(tiny_splits).eval()
    path = save_checkpoint(tmp_path / "model.pt", model, dataset="synthetic", test_accuracy=0.5)
    return path, model


def test_checkpoint_round_trip(
    checkpoint: tuple[Path, NestNet], tiny_splits: DatasetSplits
) -> None:
    path, model = checkpoint
    loaded, meta = load_checkpoint(path)
    assert meta == {"dataset": "synthetic", "test_accuracy": 0.5}
    assert loaded.config == model.config
    x = tiny_splits.test.tensors[0][:8]
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"config", "state_dict", "meta"}
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary files left


def test_checkpoint_metadata_must_be_json(tiny_splits: DatasetSplits, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "m.pt", small_model(tiny_splits), weights=torch.ones(1))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_rejected(checkpoint: tuple[Path, NestNet], damage: str) -> None:
    path, _ = checkpoint
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "garbage": os.urandom(256), "empty": b""}
    path.write_bytes(damaged[damage])
    with pytest.raises(NestError, match=f"{path} is not a readable checkpoint"):
        load_checkpoint(path)


class Exploit:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Exploit(marker), protocol=2))
    with pytest.raises(NestError, match="refused by the safe loader"):
        load_checkpoint(path)
    assert not marker.exists()


def test_wrong_format_and_missing_checkpoints(tmp_path: Path) -> None:
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(NestError, match="not a nestdnn checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(NestError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_checkpoint_whose_weights_do_not_match_its_config(
    checkpoint: tuple[Path, NestNet],
) -> None:
    path, _ = checkpoint
    payload = torch.load(path, weights_only=True)
    payload["config"]["widths"]["features.0"] = 4
    torch.save(payload, path)
    with pytest.raises(NestError, match=r"weight features\.0\.weight has shape"):
        load_checkpoint(path)
