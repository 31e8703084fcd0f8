"""Data loading: synthetic, Fashion-MNIST (real and generated IDX), CIFAR-10 binary, ImageFolder."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nestdnn.data as data_module
from nestdnn.data import (
    CIFAR_RECORD,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    DatasetSplits,
    DataSpec,
    StreamingImages,
    SyntheticConfig,
    batches_of,
    data_meta,
    images_at,
    labels_of,
    load_dataset,
    recorded_data_spec,
    resolve_classes,
    wants_streaming,
)
from nestdnn.errors import NestError

FOOTWEAR = ["Sandal", "Sneaker", "Ankle boot"]


def all_tensors(splits: DatasetSplits) -> list[torch.Tensor]:
    return [t for split in (splits.train, splits.val, splits.test) for t in split.tensors]


def unnormalise(splits: DatasetSplits, images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    return images * std + mean


# --- synthetic -------------------------------------------------------------------------------


def test_synthetic_is_deterministic_by_seed(tiny_synthetic: SyntheticConfig) -> None:
    first = load_dataset("synthetic", synthetic=tiny_synthetic, seed=3)
    again = load_dataset("synthetic", synthetic=tiny_synthetic, seed=3)
    other = load_dataset("synthetic", synthetic=tiny_synthetic, seed=4)
    for a, b in zip(all_tensors(first), all_tensors(again), strict=True):
        assert torch.equal(a, b)
    assert first.mean == again.mean and first.std == again.std
    assert not torch.equal(first.train.tensors[0], other.train.tensors[0])
    assert not torch.equal(first.test.tensors[0], other.test.tensors[0])


def test_synthetic_shapes_follow_config() -> None:
    config = SyntheticConfig(
        num_classes=5, in_channels=3, input_size=20, train_size=500, test_size=50
    )
    splits = load_dataset("synthetic", synthetic=config, val_fraction=0.2)
    assert (splits.in_channels, splits.input_size, splits.num_classes) == (3, 20, 5)
    assert splits.train.tensors[0].shape == (400, 3, 20, 20)
    assert splits.val.tensors[0].shape == (100, 3, 20, 20)
    assert splits.test.tensors[0].shape == (50, 3, 20, 20)
    assert splits.class_names == tuple(f"class{i}" for i in range(5))
    # classes are balanced and the validation split is stratified
    assert Counter(splits.train.tensors[1].tolist()) == dict.fromkeys(range(5), 80)
    assert Counter(splits.val.tensors[1].tolist()) == dict.fromkeys(range(5), 20)


def test_splits_are_normalised_with_train_statistics(tiny_synthetic: SyntheticConfig) -> None:
    splits = load_dataset("synthetic", synthetic=tiny_synthetic)
    train = splits.train.tensors[0]
    assert train.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert train.std().item() == pytest.approx(1.0, abs=1e-3)
    assert splits.test.tensors[0].dtype == torch.float32


def test_validation_is_carved_from_train_with_a_fixed_seed(tiny_synthetic: SyntheticConfig) -> None:
    splits = load_dataset("synthetic", synthetic=tiny_synthetic, val_fraction=0.25, seed=1)
    again = load_dataset("synthetic", synthetic=tiny_synthetic, val_fraction=0.25, seed=1)
    assert len(splits.train) + len(splits.val) == tiny_synthetic.train_size
    assert len(splits.test) == tiny_synthetic.test_size
    assert torch.equal(splits.val.tensors[0], again.val.tensors[0])
    train_rows = {row.numpy().tobytes() for row in splits.train.tensors[0]}
    assert not any(row.numpy().tobytes() in train_rows for row in splits.val.tensors[0])


def test_zero_validation_fraction_gives_an_empty_val_split(tiny_synthetic: SyntheticConfig) -> None:
    splits = load_dataset("synthetic", synthetic=tiny_synthetic, val_fraction=0.0)
    assert len(splits.val) == 0
    assert len(splits.train) == tiny_synthetic.train_size


def test_input_size_resizes_every_split(tiny_synthetic: SyntheticConfig) -> None:
    splits = load_dataset("synthetic", synthetic=tiny_synthetic, input_size=8)
    assert splits.input_size == 8
    assert splits.train.tensors[0].shape[-2:] == (8, 8)
    assert splits.test.tensors[0].shape[-2:] == (8, 8)


# --- data specs --------------------------------------------------------------------------------

ROADMAP_DATASET_KEYS = ["name", "data_dir", "classes", "input_size", "val_fraction", "seed",
                        "synthetic", "streaming"]  # fmt: skip


def test_data_spec_round_trips_through_json_with_the_roadmap_keys(
    tiny_synthetic: SyntheticConfig,
) -> None:
    spec = DataSpec(
        "synthetic", classes=("class2", "class0"), input_size=16, val_fraction=0.2, seed=3,
        synthetic=tiny_synthetic,
    )  # fmt: skip
    data = spec.to_dict()
    assert list(data) == ROADMAP_DATASET_KEYS
    assert data["classes"] == ["class2", "class0"]
    assert data["synthetic"] == {"num_classes": 4, "in_channels": 1, "input_size": 16,
                                 "train_size": 400, "test_size": 80}  # fmt: skip
    assert DataSpec.from_dict(json.loads(json.dumps(data))) == spec
    noisy = DataSpec("synthetic", synthetic=SyntheticConfig(noise=0.5))
    assert DataSpec.from_dict(json.loads(json.dumps(noisy.to_dict()))) == noisy
    assert DataSpec.from_dict({"name": "fashion-mnist"}) == DataSpec("fashion-mnist")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "data set 'name'"),
        ({"data_dir": "x"}, "data set 'name'"),
        ({"name": "synthetic", "colour": True}, "unknown keys: colour"),
        ({"name": "synthetic", "classes": "a,b"}, "'classes'"),
        ({"name": "synthetic", "synthetic": 3}, "'synthetic'"),
        ({"name": "synthetic", "synthetic": {"size": 3}}, "'synthetic'"),
    ],
)
def test_bad_data_specs_are_rejected(data: object, message: str) -> None:
    with pytest.raises(NestError, match=message):
        DataSpec.from_dict(data, "roadmap 'dataset'")  # type: ignore[arg-type]


def test_data_spec_loads_what_load_dataset_loads(tiny_synthetic: SyntheticConfig) -> None:
    spec = DataSpec("synthetic", classes=("class3", "class1"), val_fraction=0.25, seed=5,
                    synthetic=tiny_synthetic)  # fmt: skip
    splits = spec.load()
    direct = load_dataset("synthetic", synthetic=tiny_synthetic, classes=["class3", "class1"],
                          val_fraction=0.25, seed=5)  # fmt: skip
    for a, b in zip(all_tensors(splits), all_tensors(direct), strict=True):
        assert torch.equal(a, b)


def test_recorded_data_spec_rebuilds_the_training_split(tiny_synthetic: SyntheticConfig) -> None:
    trained = DataSpec("synthetic", val_fraction=0.2, seed=7,
                       synthetic=SyntheticConfig.sized(400, num_classes=4, in_channels=1,
                                                       input_size=16))  # fmt: skip
    splits = trained.load()
    meta = data_meta(trained, splits)
    assert meta["synthetic_samples"] == 400 and meta["class_names"] == list(splits.class_names)
    shape = {"in_channels": 1, "num_classes": 4, "input_size": 16}
    spec = recorded_data_spec("synthetic", meta, **shape)
    assert spec.val_fraction == 0.2 and spec.seed == 7 and spec.synthetic == trained.synthetic
    assert torch.equal(spec.load().val.tensors[0], splits.val.tensors[0])
    overridden = recorded_data_spec("synthetic", meta, **shape, val_fraction=0.3, seed=1)
    assert (overridden.val_fraction, overridden.seed) == (0.3, 1)
    assert recorded_data_spec("synthetic", {}, **shape).synthetic.train_size == 5000


# --- class subsets ---------------------------------------------------------------------------


def test_class_subset_keeps_and_relabels_in_the_given_order() -> None:
    config = SyntheticConfig(
        num_classes=5, in_channels=1, input_size=8, train_size=250, test_size=50
    )
    full = load_dataset("synthetic", synthetic=config)
    subset = load_dataset("synthetic", synthetic=config, classes=["class3", "CLASS1"])
    assert subset.num_classes == 2
    assert subset.class_names == ("class3", "class1")
    assert len(subset.train) + len(subset.val) == 100
    test_x, test_y = subset.test.tensors
    assert set(test_y.tolist()) == {0, 1}
    full_x, full_y = full.test.tensors
    for new_label, old_label in ((0, 3), (1, 1)):
        expected = unnormalise(full, full_x[full_y == old_label])
        got = unnormalise(subset, test_x[test_y == new_label])
        assert torch.allclose(got, expected, atol=1e-5)


def test_resolve_classes_accepts_names_and_indices() -> None:
    assert resolve_classes(FASHION_MNIST_CLASSES, ["sandal", 7, "9"]) == [5, 7, 9]


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (["Sandal", "Boot"], "unknown class 'Boot'"),
        (["Sandal", "sandal"], "given twice"),
        (["Sandal"], "at least 2"),
        (["Sandal", 10], "out of range"),
    ],
)
def test_bad_class_subsets_are_rejected(classes: list, message: str) -> None:
    with pytest.raises(NestError, match=message):
        resolve_classes(FASHION_MNIST_CLASSES, classes)


# --- Fashion-MNIST ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion_mnist(fashion_mnist_dir: Path) -> DatasetSplits:
    return load_dataset("fashion-mnist", val_fraction=0.1, seed=0)


def test_fashion_mnist_reads_the_installed_files(fashion_mnist: DatasetSplits) -> None:
    splits = fashion_mnist
    assert (splits.in_channels, splits.input_size, splits.num_classes) == (1, 28, 10)
    assert splits.class_names == FASHION_MNIST_CLASSES
    assert splits.train.tensors[0].shape == (54_000, 1, 28, 28)
    assert splits.val.tensors[0].shape == (6_000, 1, 28, 28)
    assert splits.test.tensors[0].shape == (10_000, 1, 28, 28)
    assert Counter(splits.train.tensors[1].tolist()) == dict.fromkeys(range(10), 5_400)
    assert Counter(splits.val.tensors[1].tolist()) == dict.fromkeys(range(10), 600)
    assert Counter(splits.test.tensors[1].tolist()) == dict.fromkeys(range(10), 1_000)
    # the known pixel statistics of Fashion-MNIST's training images
    assert splits.mean[0] == pytest.approx(0.286, abs=0.002)
    assert splits.std[0] == pytest.approx(0.353, abs=0.002)


def test_fashion_mnist_footwear_subset(fashion_mnist_dir: Path) -> None:
    splits = load_dataset("fashion-mnist", classes=FOOTWEAR)
    assert splits.class_names == tuple(FOOTWEAR)
    assert splits.num_classes == 3
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16_200, 1_800, 3_000)
    assert Counter(splits.test.tensors[1].tolist()) == {0: 1_000, 1: 1_000, 2: 1_000}


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def write_fake_fashion_mnist(directory: Path, *, compress: bool) -> dict[str, np.ndarray]:
    """A tiny IDX data set in Fashion-MNIST's file layout (10 train / 5 test images)."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (20, 28, 28)),
        "train_labels": np.arange(20) % 10,
        "test_images": rng.integers(0, 256, (10, 28, 28)),
        "test_labels": np.arange(10) % 10,
    }
    for key, stem in FASHION_MNIST_FILES.items():
        write_idx(directory / (f"{stem}.gz" if compress else stem), arrays[key], compress=compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_a_data_dir(tmp_path: Path, compress: bool) -> None:
    arrays = write_fake_fashion_mnist(tmp_path, compress=compress)
    splits = load_dataset("fashion-mnist", tmp_path, val_fraction=0.0)
    test_x, test_y = splits.test.tensors
    assert test_x.shape == (10, 1, 28, 28)
    assert test_y.tolist() == arrays["test_labels"].tolist()
    expected = torch.from_numpy(arrays["test_images"]).float().unsqueeze(1) / 255
    assert torch.allclose(unnormalise(splits, test_x), expected, atol=1e-5)


def test_truncated_idx_file_is_rejected(tmp_path: Path) -> None:
    write_fake_fashion_mnist(tmp_path, compress=False)
    images = tmp_path / FASHION_MNIST_FILES["train_images"]
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(NestError, match="truncated or corrupt"):
        load_dataset("fashion-mnist", tmp_path)


def test_missing_fashion_mnist_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nestdnn.data.FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(NestError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(NestError, match="--data-dir must hold the four IDX files"):
        load_dataset("fashion-mnist", elsewhere)


def test_missing_data_dir_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(NestError, match="does not exist"):
        load_dataset("fashion-mnist", tmp_path / "nowhere")


def test_unknown_dataset_is_rejected() -> None:
    with pytest.raises(NestError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


# --- CIFAR-10 --------------------------------------------------------------------------------


def write_cifar_batch(path: Path, labels: list[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    records = rng.integers(0, 256, (len(labels), CIFAR_RECORD), dtype=np.uint8)
    records[:, 0] = labels
    path.write_bytes(records.tobytes())
    return records


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    batches = tmp_path / "cifar-10-batches-bin"
    batches.mkdir()
    for i in range(1, 6):
        write_cifar_batch(batches / f"data_batch_{i}.bin", list(range(10)) * 2, seed=i)
    test = write_cifar_batch(batches / "test_batch.bin", list(range(10)), seed=0)
    splits = load_dataset("cifar10", tmp_path, val_fraction=0.1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 10)
    assert splits.test.tensors[0].shape == (10, 3, 32, 32)
    assert splits.class_names[0] == "airplane"
    first = unnormalise(splits, splits.test.tensors[0][:1])
    expected = torch.from_numpy(test[0, 1:].reshape(1, 3, 32, 32).copy()).float() / 255
    assert torch.allclose(first, expected, atol=1e-5)


def test_cifar10_pickled_version_is_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "cifar-10-batches-py"
    pickled.mkdir()
    (pickled / "test_batch").write_bytes(b"not read")
    with pytest.raises(NestError, match=r"refuses to load.*binary version"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NestError, match="needs --data-dir"):
        load_dataset("cifar10")
    with pytest.raises(NestError, match="CIFAR-10 not found"):
        load_dataset("cifar10", tmp_path)


# --- ImageFolder -----------------------------------------------------------------------------


def write_images(root: Path, classes: dict[str, int], mode: str, size: int = 12) -> None:
    rng = np.random.default_rng(0)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i}.png")


def test_imagefolder_without_test_dir_carves_a_test_split(tmp_path: Path) -> None:
    write_images(tmp_path, {"cat": 10, "dog": 10}, "L")
    splits = load_dataset("imagefolder", tmp_path, val_fraction=0.25, test_fraction=0.2)
    assert splits.class_names == ("cat", "dog")
    assert (splits.in_channels, splits.input_size) == (1, 12)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 4)


def test_imagefolder_with_train_and_test_dirs(tmp_path: Path) -> None:
    write_images(tmp_path / "train", {"a": 6, "b": 6, "c": 6}, "RGB")
    write_images(tmp_path / "test", {"a": 2, "b": 2, "c": 2}, "RGB")
    splits = load_dataset("imagefolder", tmp_path, val_fraction=0.0, input_size=8)
    assert (splits.in_channels, splits.input_size, splits.num_classes) == (3, 8, 3)
    assert (len(splits.train), len(splits.test)) == (18, 6)
    assert splits.test.tensors[1].tolist() == [0, 0, 1, 1, 2, 2]


def test_imagefolder_rejects_unreadable_images(tmp_path: Path) -> None:
    write_images(tmp_path, {"a": 3, "b": 3}, "L")
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(NestError, match="cannot read image"):
        load_dataset("imagefolder", tmp_path)


# --- streamed image folders --------------------------------------------------------------------


def test_a_streamed_folder_reads_as_the_in_memory_loader_reads_it(tmp_path: Path) -> None:
    write_images(tmp_path / "train", {"b": 9, "a": 8, "c": 7}, "RGB", size=10)
    write_images(tmp_path / "test", {"a": 2, "b": 3, "c": 2}, "RGB", size=10)
    options = {"val_fraction": 0.25, "input_size": 8, "classes": ["c", "a"], "seed": 1}
    memory = load_dataset("imagefolder", tmp_path, **options)
    stream = load_dataset("imagefolder", tmp_path, streaming=True, workers=0, **options)
    assert isinstance(stream.train, StreamingImages)
    assert stream.class_names == memory.class_names == ("c", "a")
    assert (stream.in_channels, stream.input_size) == (memory.in_channels, memory.input_size)
    # every train image is in the statistics sample, so even the normalisation is the same
    assert stream.mean == pytest.approx(memory.mean) and stream.std == pytest.approx(memory.std)
    for ours, theirs in zip((stream.train, stream.val, stream.test),
                            (memory.train, memory.val, memory.test), strict=True):  # fmt: skip
        assert torch.equal(labels_of(ours), theirs.tensors[1])
        images = images_at(ours, torch.arange(len(ours)))
        torch.testing.assert_close(images, theirs.tensors[0], atol=1e-5, rtol=1e-5)


def test_streamed_batches_come_from_workers_in_the_asked_order(tmp_path: Path) -> None:
    write_images(tmp_path, {"a": 6, "b": 6}, "L", size=6)
    splits = load_dataset("imagefolder", tmp_path, val_fraction=0.0, streaming=True, workers=2)
    order = [torch.tensor([3, 0, 5]), torch.tensor([1, 2])]
    batches = list(batches_of(splits.train, order))
    assert [len(labels) for _, labels in batches] == [3, 2]
    assert torch.equal(batches[0][0], images_at(splits.train, order[0]))
    assert torch.equal(batches[1][1], labels_of(splits.train)[order[1]])


def test_only_image_folders_stream_and_large_ones_do_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(NestError, match="only an imagefolder data set can be streamed"):
        load_dataset("synthetic", streaming=True)
    write_images(tmp_path, {"a": 5, "b": 5}, "RGB", size=10)
    assert not wants_streaming("imagefolder", tmp_path, None)
    assert not wants_streaming("fashion-mnist", None, None)
    monkeypatch.setattr(data_module, "MEMORY_LIMIT_BYTES", 10 * 3 * 10 * 10 * 4 - 1)
    assert wants_streaming("imagefolder", tmp_path, None)
    assert not wants_streaming("imagefolder", tmp_path, 5)  # smaller when resized


def test_a_streamed_folder_is_recorded_and_rebuilt_streamed(tmp_path: Path) -> None:
    write_images(tmp_path, {"a": 5, "b": 5}, "L", size=6)
    spec = DataSpec("imagefolder", str(tmp_path), streaming=True)
    splits = spec.load(workers=0)
    meta = data_meta(spec, splits)
    assert meta["streaming"] is True
    again = recorded_data_spec("imagefolder", meta, in_channels=1, num_classes=2, input_size=6)
    assert again.streaming and isinstance(again.load(workers=0).val, StreamingImages)
    assert DataSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
