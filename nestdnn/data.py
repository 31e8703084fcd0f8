"""Data sets: Fashion-MNIST, CIFAR-10 (binary), ImageFolder and synthetic.

Nothing is ever downloaded. The in-memory loaders produce raw train/test images as float
tensors in [0, 1] (N, C, H, W) with int64 labels; `load_dataset` then optionally keeps a
subset of classes (relabelled 0..k-1), resizes, carves a stratified validation split out of
train with a fixed seed, and normalises all splits with the per-channel mean/std of the
remaining train split.

An image folder too large for memory is streamed instead (`DataSpec.streaming`): its splits
are `StreamingImages`, lists of files decoded per sample by DataLoader workers, with the
same class order, train/val/test split and resizing as the in-memory loader; its mean/std
come from a fixed-seed sample of the train split (`STATS_SAMPLE` images). `ImageData` is
either kind; `labels_of`, `images_at` and `batches_of` read both.

A `DataSpec` names all of `load_dataset`'s arguments, so that a data set and its exact split
can be recorded (`nestdnn train` in its checkpoint's metadata, `nestdnn prune` in the roadmap)
and rebuilt by the later stages.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from nestdnn.errors import NestError

log = logging.getLogger(__name__)

DATASETS = ("fashion-mnist", "cifar10", "imagefolder", "synthetic")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif")
IDX_UBYTE = 0x08
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SYNTHETIC_SAMPLES = 5000
STATS_SAMPLE = 2048  # streamed train images whose pixels give the mean/std (fixed seed)
MEMORY_LIMIT_BYTES = 2 << 30  # an image folder larger than this as float32 tensors streams
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)  # DataLoader processes decoding streamed images
LOADERS = ("auto", "memory", "stream")
# Checkpoint metadata (written by `nestdnn train`, see `data_meta`) that describes the model's
# data and its split, and so stays true for every model derived from it.
DATA_META_KEYS = (
    "dataset",
    "data_dir",
    "class_names",
    "mean",
    "std",
    "val_fraction",
    "seed",
    "synthetic_samples",
    "streaming",
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the generated class-conditional data set."""

    num_classes: int = 10
    in_channels: int = 3
    input_size: int = 32
    train_size: int = 5000
    test_size: int = 1000
    noise: float = 2.0

    @classmethod
    def sized(
        cls, samples: int, *, num_classes: int, in_channels: int, input_size: int
    ) -> SyntheticConfig:
        """`samples` training images (the test split gets a fifth as many) of the given shape."""
        return cls(
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            train_size=samples,
            test_size=max(1, samples // 5),
        )

    def to_dict(self) -> dict[str, Any]:
        """The sizes; `noise` only when not the default (roadmaps have never recorded it)."""
        data = asdict(self)
        if self.noise == SyntheticConfig.noise:
            del data["noise"]
        return data


@dataclass
class RawData:
    """Un-normalised images in [0, 1] and labels, before any split or class subset."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    class_names: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class StreamingImages(Dataset):
    """One split of an image folder, decoded per sample when read.

    A sample is decoded as the in-memory loader decodes it (PIL, converted to ``mode``,
    bilinear resize to a ``side`` x ``side`` square), passed through ``augment`` if set (a
    picklable transform of the (C, H, W) uint8 tensor, e.g. torchvision's random crop), scaled
    to [0, 1] and normalised with ``mean``/``std``. ``workers`` DataLoader processes decode
    the batches of `loader`.
    """

    files: tuple[Path, ...]
    labels: Tensor  # int64, one per file
    mode: str  # "L" or "RGB"
    side: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    workers: int = 0
    augment: Callable[[Tensor], Tensor] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        pixels = self.pixels(index)
        if self.augment is not None:
            pixels = self.augment(pixels)
        image = pixels.float().div_(255.0)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return image.sub_(mean).div_(std), int(self.labels[index])

    def pixels(self, index: int) -> Tensor:
        """Sample ``index`` decoded and resized, as a (C, side, side) uint8 tensor."""
        image = _open_image(self.files[index]).convert(self.mode)
        array = np.asarray(image.resize((self.side, self.side), Image.BILINEAR), dtype=np.uint8)
        tensor = torch.from_numpy(array.copy())
        return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)

    def with_augment(self, augment: Callable[[Tensor], Tensor] | None) -> StreamingImages:
        return replace(self, augment=augment)

    def with_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> StreamingImages:
        return replace(self, mean=tuple(mean), std=tuple(std))

    def loader(
        self,
        batches: Sequence[Sequence[int]],
        *,
        generator: torch.Generator | None = None,
        pin_memory: bool = False,
    ) -> DataLoader:
        """The given batches (lists of sample indices), decoded by ``workers`` processes."""
        return DataLoader(
            self,
            batch_sampler=batches,
            num_workers=self.workers,
            generator=generator,
            pin_memory=pin_memory,
        )


ImageData = TensorDataset | StreamingImages
"""A split held in memory (images, labels) or streamed from files."""


@dataclass
class DatasetSplits:
    """Normalised train/val/test data sets and what a model needs to know about them."""

    name: str
    train: ImageData
    val: ImageData
    test: ImageData
    in_channels: int
    input_size: int
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test,"
            f" {self.num_classes} classes, {self.in_channels}x{self.input_size}x{self.input_size}"
        )


@dataclass(frozen=True)
class DataSpec:
    """A data set and its exact train/val split: everything `load_dataset` needs to rebuild it.

    Recorded in the roadmap (key ``dataset``) so that pruning and recovery use the split the
    vanilla model was trained with and never train on its validation images.
    """

    name: str
    data_dir: str | None = None
    classes: tuple[str, ...] | None = None  # a class subset (names), relabelled in this order
    input_size: int | None = None  # resize to this square size
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = 0  # of the split (and of the synthetic images)
    synthetic: SyntheticConfig | None = None  # the synthetic set's shape
    streaming: bool = False  # an image folder decoded per batch instead of held in memory

    def load(self, workers: int = DEFAULT_WORKERS) -> DatasetSplits:
        """The normalised train/val/test splits (``workers`` decode a streamed folder)."""
        return load_dataset(
            self.name,
            self.data_dir,
            val_fraction=self.val_fraction,
            seed=self.seed,
            classes=self.classes,
            input_size=self.input_size,
            synthetic=self.synthetic,
            streaming=self.streaming,
            workers=workers,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with every key (the roadmap's ``dataset`` object)."""
        return {
            "name": self.name,
            "data_dir": self.data_dir,
            "classes": None if self.classes is None else list(self.classes),
            "input_size": self.input_size,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "synthetic": None if self.synthetic is None else self.synthetic.to_dict(),
            "streaming": self.streaming,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "data spec") -> DataSpec:
        """Parse `to_dict`'s output (missing keys take their defaults); errors name `source`."""
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise NestError(f"{source} must be an object with a data set 'name'")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise NestError(f"{source} has unknown keys: {', '.join(unknown)}")
        classes, synthetic = data.get("classes"), data.get("synthetic")
        if classes is not None and not (
            isinstance(classes, list) and all(isinstance(c, str) for c in classes)
        ):
            raise NestError(f"{source}: 'classes' must be a list of class names or null")
        if synthetic is not None and not isinstance(synthetic, Mapping):
            raise NestError(f"{source}: 'synthetic' must be an object or null")
        try:
            return cls(
                name=data["name"],
                data_dir=data.get("data_dir"),
                classes=None if classes is None else tuple(classes),
                input_size=data.get("input_size"),
                val_fraction=data.get("val_fraction", DEFAULT_VAL_FRACTION),
                seed=data.get("seed", 0),
                synthetic=None if synthetic is None else SyntheticConfig(**synthetic),
                streaming=bool(data.get("streaming", False)),
            )
        except TypeError as e:  # unknown synthetic keys
            raise NestError(f"{source}: 'synthetic': {e}") from e


def data_meta(spec: DataSpec, splits: DatasetSplits) -> dict[str, Any]:
    """What a checkpoint records about its training data (`DATA_META_KEYS`): enough to reload
    the same split later, and to normalise inputs."""
    meta: dict[str, Any] = {
        "dataset": spec.name,
        "data_dir": spec.data_dir,
        "class_names": list(splits.class_names),
        "mean": list(splits.mean),
        "std": list(splits.std),
        "val_fraction": spec.val_fraction,
        "seed": spec.seed,
    }
    if spec.synthetic is not None:
        meta["synthetic_samples"] = spec.synthetic.train_size
    if spec.streaming:
        meta["streaming"] = True
    return meta


def recorded_data_spec(
    name: str,
    meta: Mapping[str, Any],
    *,
    in_channels: int,
    num_classes: int,
    input_size: int,
    data_dir: str | None = None,
    val_fraction: float | None = None,
    seed: int | None = None,
) -> DataSpec:
    """Data set `name` split as a checkpoint's `meta` records it (see `data_meta`), at the
    model's shape; `data_dir`, `val_fraction` and `seed`, when given, override the record."""
    synthetic = None
    if name == "synthetic":
        synthetic = SyntheticConfig.sized(
            int(meta.get("synthetic_samples", DEFAULT_SYNTHETIC_SAMPLES)),
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
        )
    class_names = meta.get("class_names")
    return DataSpec(
        name=name,
        data_dir=data_dir or meta.get("data_dir"),
        classes=tuple(class_names) if class_names else None,
        input_size=input_size,
        val_fraction=_first(val_fraction, meta.get("val_fraction"), DEFAULT_VAL_FRACTION),
        seed=_first(seed, meta.get("seed"), 0),
        synthetic=synthetic,
        streaming=bool(meta.get("streaming", False)),
    )


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    classes: Sequence[str | int] | None = None,
    input_size: int | None = None,
    synthetic: SyntheticConfig | None = None,
    test_fraction: float = 0.2,
    streaming: bool = False,
    workers: int = DEFAULT_WORKERS,
) -> DatasetSplits:
    """Load a data set by name into normalised splits, in memory unless `streaming`.

    `classes` keeps only those classes (names or indices) and relabels them in the given order;
    `input_size` resizes images to that square size; `synthetic` shapes the synthetic set;
    `test_fraction` is used only for an ImageFolder tree without its own test directory;
    `streaming` (image folders only) decodes images per batch in `workers` processes.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise NestError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if input_size is not None and input_size < 1:
        raise NestError(f"input size must be positive, got {input_size}")
    if workers < 0:
        raise NestError(f"the number of data workers must be >= 0, got {workers}")
    if streaming:
        if name != "imagefolder":
            raise NestError(f"only an imagefolder data set can be streamed, not {name}")
        listing = list_imagefolder(
            _data_directory(name, data_dir), test_fraction=test_fraction, seed=seed
        )
        if classes is not None:
            listing = listing.select(classes)
        splits = stream_imagefolder(
            listing, val_fraction=val_fraction, seed=seed, input_size=input_size, workers=workers
        )
        log.info("streaming %s", splits.describe())
        return splits
    raw = _load_raw(
        name,
        data_dir,
        seed=seed,
        synthetic=synthetic,
        input_size=input_size,
        test_fraction=test_fraction,
    )
    if classes is not None:
        raw = select_classes(raw, classes)
    if input_size is not None and input_size != raw.train_x.shape[-1]:
        raw.train_x = resize_images(raw.train_x, input_size)
        raw.test_x = resize_images(raw.test_x, input_size)
    train_idx, val_idx = stratified_split(raw.train_y, val_fraction, seed)
    train_x, train_y = raw.train_x[train_idx], raw.train_y[train_idx]
    val_x, val_y = raw.train_x[val_idx], raw.train_y[val_idx]
    mean, std = channel_stats(train_x)
    splits = DatasetSplits(
        name=name,
        train=TensorDataset(normalise_(train_x, mean, std), train_y),
        val=TensorDataset(normalise_(val_x, mean, std), val_y),
        test=TensorDataset(normalise_(raw.test_x, mean, std), raw.test_y),
        in_channels=train_x.shape[1],
        input_size=train_x.shape[-1],
        num_classes=len(raw.class_names),
        class_names=raw.class_names,
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
    )
    log.info("loaded %s", splits.describe())
    return splits


def wants_streaming(name: str, data_dir: str | Path | None, input_size: int | None) -> bool:
    """`--loader auto`: stream an image folder whose images, as float32 tensors, would take
    more than `MEMORY_LIMIT_BYTES` (counting three channels); hold everything else in memory."""
    if name != "imagefolder" or data_dir is None:
        return False
    listing = list_imagefolder(_data_directory(name, data_dir), test_fraction=0.2, seed=0)
    count = len(listing.train) + len(listing.test)
    side = input_size or _image_side(listing.train[0][0])
    return count * 3 * side * side * 4 > MEMORY_LIMIT_BYTES


def _data_directory(name: str, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise NestError(f"{name} needs --data-dir: a directory of class subdirectories")
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise NestError(f"data directory does not exist: {directory}")
    return directory


def _load_raw(
    name: str,
    data_dir: str | Path | None,
    *,
    seed: int,
    synthetic: SyntheticConfig | None,
    input_size: int | None,
    test_fraction: float,
) -> RawData:
    directory = Path(data_dir).expanduser() if data_dir is not None else None
    if directory is not None and not directory.is_dir():
        raise NestError(f"data directory does not exist: {directory}")
    if name == "fashion-mnist":
        return load_fashion_mnist(directory or FASHION_MNIST_DIR)
    if name == "cifar10":
        if directory is None:
            raise NestError(
                "cifar10 needs --data-dir: a directory holding cifar-10-batches-bin"
                f" (the binary version, from {CIFAR10_URL})"
            )
        return load_cifar10(directory)
    if name == "imagefolder":
        if directory is None:
            raise NestError("imagefolder needs --data-dir: a directory of class subdirectories")
        return load_imagefolder(
            directory, input_size=input_size, test_fraction=test_fraction, seed=seed
        )
    if name == "synthetic":
        return make_synthetic(synthetic or SyntheticConfig(), seed=seed)
    raise NestError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# --- Fashion-MNIST (IDX files) ---------------------------------------------------------------


def load_fashion_mnist(directory: Path) -> RawData:
    """Read the four (optionally gzipped) IDX files of Fashion-MNIST from `directory`."""
    paths = {key: _find_idx_file(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        hint = (
            "install it with `apt-get install dataset-fashion-mnist`, or pass --data-dir DIR"
            " holding the four IDX files"
            if directory == FASHION_MNIST_DIR
            else "--data-dir must hold the four IDX files (the Debian package"
            f" dataset-fashion-mnist installs them in {FASHION_MNIST_DIR})"
        )
        raise NestError(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)},"
            f" each optionally .gz); {hint}"
        )
    arrays = {key: read_idx(path) for key, path in paths.items() if path is not None}
    return RawData(
        train_x=_images_to_float(arrays["train_images"]),
        train_y=_labels(arrays["train_labels"], arrays["train_images"], len(FASHION_MNIST_CLASSES)),
        test_x=_images_to_float(arrays["test_images"]),
        test_y=_labels(arrays["test_labels"], arrays["test_images"], len(FASHION_MNIST_CLASSES)),
        class_names=FASHION_MNIST_CLASSES,
    )


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse an unsigned-byte IDX file (gzipped or not) into a uint8 array."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise NestError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE:
        raise NestError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise NestError(f"{path} has a truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise NestError(
            f"{path} is truncated or corrupt: header says {shape} ({expected} bytes),"
            f" file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _images_to_float(images: np.ndarray) -> Tensor:
    """(N, H, W) or (N, H, W, C) uint8 -> (N, C, H, W) float in [0, 1]."""
    tensor = torch.from_numpy(images.copy())
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return tensor.float().div_(255.0)


def _labels(labels: np.ndarray, images: np.ndarray, num_classes: int) -> Tensor:
    if labels.ndim != 1 or len(labels) != len(images):
        raise NestError(f"{len(labels)} labels do not match {len(images)} images")
    if labels.size and labels.max() >= num_classes:
        raise NestError(f"label {labels.max()} out of range for {num_classes} classes")
    return torch.from_numpy(labels.astype(np.int64))


# --- CIFAR-10 (binary version) ---------------------------------------------------------------

CIFAR_RECORD = 1 + 3 * 32 * 32


def load_cifar10(directory: Path) -> RawData:
    """Read CIFAR-10's binary version (`cifar-10-batches-bin`); the pickled version is refused."""
    batches = _find_cifar_bin_dir(directory)
    train = [_read_cifar_batch(batches / f"data_batch_{i}.bin") for i in range(1, 6)]
    test_x, test_y = _read_cifar_batch(batches / "test_batch.bin")
    return RawData(
        train_x=torch.cat([x for x, _ in train]),
        train_y=torch.cat([y for _, y in train]),
        test_x=test_x,
        test_y=test_y,
        class_names=_cifar_class_names(batches),
    )


def _find_cifar_bin_dir(directory: Path) -> Path:
    for candidate in (directory, directory / "cifar-10-batches-bin"):
        if (candidate / "test_batch.bin").is_file():
            return candidate
    pickled = next(
        (d for d in (directory, directory / "cifar-10-batches-py") if (d / "test_batch").is_file()),
        None,
    )
    if pickled is not None:
        raise NestError(
            f"{pickled} holds CIFAR-10's Python version (pickle files), which nestdnn refuses to"
            " load because unpickling can run arbitrary code; extract the binary version"
            " (cifar-10-binary.tar.gz -> cifar-10-batches-bin,"
            f" from {CIFAR10_URL}) into {directory}"
        )
    raise NestError(
        f"CIFAR-10 not found in {directory}: expected cifar-10-batches-bin/ with"
        f" data_batch_1..5.bin and test_batch.bin (the binary version, from {CIFAR10_URL})"
    )


def _read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise NestError(f"cannot read CIFAR-10 batch {path}: {e}") from e
    if data.size == 0 or data.size % CIFAR_RECORD:
        raise NestError(f"{path} is not a CIFAR-10 binary batch (size {data.size} bytes)")
    records = data.reshape(-1, CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() >= len(CIFAR10_CLASSES):
        raise NestError(f"{path} has label {labels.max()}: not a CIFAR-10 binary batch")
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy()).float().div_(255.0)
    return images, torch.from_numpy(labels.astype(np.int64))


def _cifar_class_names(batches: Path) -> tuple[str, ...]:
    meta = batches / "batches.meta.txt"
    if meta.is_file():
        names = tuple(line.strip() for line in meta.read_text().splitlines() if line.strip())
        if len(names) == len(CIFAR10_CLASSES):
            return names
    return CIFAR10_CLASSES


# --- ImageFolder -----------------------------------------------------------------------------


GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
LabelledFiles = list[tuple[Path, int]]


@dataclass(frozen=True)
class FolderListing:
    """An image folder's files and labels, split into train and test, and its class names."""

    train: LabelledFiles
    test: LabelledFiles
    class_names: tuple[str, ...]

    def select(self, classes: Sequence[str | int]) -> FolderListing:
        """Keep only `classes` (names or indices) and relabel them 0..k-1 in that order."""
        indices = resolve_classes(self.class_names, classes)
        relabel = {old: new for new, old in enumerate(indices)}
        return FolderListing(
            train=[(path, relabel[label]) for path, label in self.train if label in relabel],
            test=[(path, relabel[label]) for path, label in self.test if label in relabel],
            class_names=tuple(self.class_names[i] for i in indices),
        )


def list_imagefolder(directory: Path, *, test_fraction: float, seed: int) -> FolderListing:
    """List `root/<class>/<image>` (or `root/train/...` + `root/test/...`), classes sorted by
    name. Without a test directory, a stratified `test_fraction` of the images becomes the
    test split (fixed seed)."""
    train_root, test_root = directory / "train", directory / "test"
    if train_root.is_dir() and test_root.is_dir():
        class_names = _class_dirs(train_root)
        extra = sorted(set(_class_dirs(test_root)) - set(class_names))
        if extra:
            raise NestError(f"{test_root} has classes missing from {train_root}: {extra}")
        train_files = _image_files(train_root, class_names)
        test_files = _image_files(test_root, class_names)
    else:
        if not 0.0 < test_fraction < 1.0:
            raise NestError(f"test_fraction must be in (0, 1), got {test_fraction}")
        class_names = _class_dirs(directory)
        files = _image_files(directory, class_names)
        labels = torch.tensor([label for _, label in files])
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        train_files = [files[i] for i in train_idx.tolist()]
        test_files = [files[i] for i in test_idx.tolist()]
    return FolderListing(train_files, test_files, tuple(class_names))


def load_imagefolder(
    directory: Path, *, input_size: int | None, test_fraction: float, seed: int
) -> RawData:
    """Read an image folder (see `list_imagefolder`) into memory with PIL.

    Images become grey if every image is grey, else RGB, and are resized to a square of side
    `input_size` (default: the first image's shorter side).
    """
    listing = list_imagefolder(directory, test_fraction=test_fraction, seed=seed)
    train_images = [_open_image(path) for path, _ in listing.train]
    test_images = [_open_image(path) for path, _ in listing.test]
    mode = "L" if all(im.mode in GREY_MODES for im in train_images + test_images) else "RGB"
    side = input_size or min(train_images[0].size)
    return RawData(
        train_x=_images_to_tensor(train_images, mode, side),
        train_y=_file_labels(listing.train),
        test_x=_images_to_tensor(test_images, mode, side),
        test_y=_file_labels(listing.test),
        class_names=listing.class_names,
    )


def stream_imagefolder(
    listing: FolderListing,
    *,
    val_fraction: float,
    seed: int,
    input_size: int | None,
    workers: int,
) -> DatasetSplits:
    """Splits of an image folder that decode their images when read (see `StreamingImages`).

    The train/val split, class order and resizing are the in-memory loader's. Grey or RGB
    and the mean/std are decided on a fixed-seed sample of `STATS_SAMPLE` train images.
    """
    labels = _file_labels(listing.train)
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    gen = torch.Generator().manual_seed(seed)
    sample = train_idx[torch.randperm(len(train_idx), generator=gen)[:STATS_SAMPLE]]
    files = tuple(path for path, _ in listing.train)
    modes = {_image_header(files[i]).mode for i in sample.tolist()}
    mode = "L" if modes <= GREY_MODES else "RGB"
    side = input_size or _image_side(files[0])
    channels = 1 if mode == "L" else 3
    unnormalised = StreamingImages(
        files, labels, mode, side, (0.0,) * channels, (1.0,) * channels, workers
    )
    mean, std = _streamed_stats(unnormalised, sample)

    def part(chosen: Tensor, source: LabelledFiles, source_labels: Tensor) -> StreamingImages:
        return replace(
            unnormalised,
            files=tuple(source[i][0] for i in chosen.tolist()),
            labels=source_labels[chosen],
            mean=mean,
            std=std,
        )

    test_labels = _file_labels(listing.test)
    return DatasetSplits(
        name="imagefolder",
        train=part(train_idx, listing.train, labels),
        val=part(val_idx, listing.train, labels),
        test=part(torch.arange(len(listing.test)), listing.test, test_labels),
        in_channels=channels,
        input_size=side,
        num_classes=len(listing.class_names),
        class_names=listing.class_names,
        mean=mean,
        std=std,
    )


def _streamed_stats(
    data: StreamingImages, indices: Tensor, batch_size: int = 64
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the (unnormalised) images at `indices`, in float64."""
    if len(indices) == 0:
        raise NestError("the training split is empty")
    total = total_sq = None
    count = 0
    for images, _ in batches_of(data, indices.split(batch_size)):
        block = images.double()
        sums, squares = block.sum(dim=(0, 2, 3)), block.square().sum(dim=(0, 2, 3))
        total = sums if total is None else total + sums
        total_sq = squares if total_sq is None else total_sq + squares
        count += block.numel() // block.shape[1]
    assert total is not None and total_sq is not None
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt().clamp_min(1e-6)
    return tuple(mean.float().tolist()), tuple(std.float().tolist())


def _file_labels(files: LabelledFiles) -> Tensor:
    return torch.tensor([label for _, label in files], dtype=torch.int64)


def _image_header(path: Path) -> Image.Image:
    """The image's size and mode without decoding its pixels."""
    try:
        with Image.open(path) as image:
            return image
    except (OSError, UnidentifiedImageError) as e:
        raise NestError(f"cannot read image {path}: {e}") from e


def _image_side(path: Path) -> int:
    return min(_image_header(path).size)


def _class_dirs(root: Path) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise NestError(f"{root} has no class subdirectories (expected {root}/<class>/<image>)")
    return names


def _image_files(root: Path, class_names: Sequence[str]) -> list[tuple[Path, int]]:
    files = [
        (path, label)
        for label, name in enumerate(class_names)
        if (root / name).is_dir()
        for path in sorted((root / name).rglob("*"))
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    ]
    if not files:
        raise NestError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return files


def _open_image(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError) as e:
        raise NestError(f"cannot read image {path}: {e}") from e
    return image


def _images_to_tensor(images: Sequence[Image.Image], mode: str, side: int) -> Tensor:
    arrays = [
        np.asarray(im.convert(mode).resize((side, side), Image.BILINEAR), dtype=np.uint8)
        for im in images
    ]
    return _images_to_float(np.stack(arrays))


# --- synthetic -------------------------------------------------------------------------------


def make_synthetic(config: SyntheticConfig, *, seed: int) -> RawData:
    """Class-conditional images: a smooth random prototype per class, shifted, scaled and noised.

    Everything (prototypes, samples, labels) comes from one generator seeded with `seed`.
    """
    if min(config.num_classes, config.in_channels, config.input_size) < 1:
        raise NestError(f"synthetic sizes must be positive: {config}")
    if config.train_size < config.num_classes or config.test_size < 1:
        raise NestError(f"synthetic set too small for {config.num_classes} classes: {config}")
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(config.num_classes, config.in_channels, 4, 4, generator=gen)
    size = config.input_size
    prototypes = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    prototypes = prototypes / prototypes.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    train_x, train_y = _synthetic_samples(prototypes, config.train_size, config.noise, gen)
    test_x, test_y = _synthetic_samples(prototypes, config.test_size, config.noise, gen)
    names = tuple(f"class{i}" for i in range(config.num_classes))
    return RawData(train_x, train_y, test_x, test_y, names)


def _synthetic_samples(
    prototypes: Tensor, count: int, noise: float, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    num_classes, _, size, _ = prototypes.shape
    labels = torch.arange(count) % num_classes
    labels = labels[torch.randperm(count, generator=gen)]
    max_shift = max(1, size // 8)
    shifts = torch.randint(-max_shift, max_shift + 1, (count, 2), generator=gen)
    scales = 0.7 + 0.6 * torch.rand(count, 1, 1, 1, generator=gen)
    images = torch.stack(
        [
            prototypes[label].roll(shifts=(int(dy), int(dx)), dims=(1, 2))
            for label, (dy, dx) in zip(labels.tolist(), shifts.tolist(), strict=True)
        ]
    )
    images = scales * images + noise * torch.randn(images.shape, generator=gen)
    # Squash into [0, 1] like real pixel data; normalisation comes later.
    return torch.sigmoid(images), labels


# --- transforms shared by every loader -------------------------------------------------------


def select_classes(raw: RawData, classes: Sequence[str | int]) -> RawData:
    """Keep only `classes` (names, case-insensitive, or indices) and relabel them 0..k-1."""
    indices = resolve_classes(raw.class_names, classes)
    mapping = torch.full((len(raw.class_names),), -1, dtype=torch.int64)
    mapping[torch.tensor(indices)] = torch.arange(len(indices))
    train_keep = mapping[raw.train_y] >= 0
    test_keep = mapping[raw.test_y] >= 0
    return RawData(
        train_x=raw.train_x[train_keep],
        train_y=mapping[raw.train_y[train_keep]],
        test_x=raw.test_x[test_keep],
        test_y=mapping[raw.test_y[test_keep]],
        class_names=tuple(raw.class_names[i] for i in indices),
    )


def resolve_classes(class_names: Sequence[str], classes: Sequence[str | int]) -> list[int]:
    """Map class names or indices (also digit strings) to indices into `class_names`."""
    lookup = {name.lower(): i for i, name in enumerate(class_names)}
    indices = []
    for item in classes:
        if isinstance(item, int) or (isinstance(item, str) and item.strip().isdigit()):
            index = int(item)
            if not 0 <= index < len(class_names):
                raise NestError(f"class index {index} out of range 0..{len(class_names) - 1}")
        elif item.strip().lower() in lookup:
            index = lookup[item.strip().lower()]
        else:
            raise NestError(f"unknown class {item!r}; classes are: {', '.join(class_names)}")
        if index in indices:
            raise NestError(f"class {class_names[index]!r} given twice")
        indices.append(index)
    if len(indices) < 2:
        raise NestError("a class subset needs at least 2 classes")
    return indices


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices into (rest, held-out) taking round(fraction * n_c) of every class c."""
    gen = torch.Generator().manual_seed(seed)
    rest, held = [], []
    for label in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == label).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_held = round(fraction * len(idx))
        held.append(idx[:n_held])
        rest.append(idx[n_held:])
    return torch.cat(rest).sort().values, torch.cat(held).sort().values


def resize_images(images: Tensor, size: int) -> Tensor:
    """Bilinear (antialiased) resize of a (N, C, H, W) batch to (N, C, size, size)."""
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    ).clamp_(0.0, 1.0)


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of a (N, C, H, W) batch, accumulated in float64 by chunks."""
    if len(images) == 0:
        raise NestError("the training split is empty")
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].double()
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.square().sum(dim=(0, 2, 3))
    count = images.numel() // images.shape[1]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    return mean.float(), std.clamp_min(1e-6).float()


def normalise_(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Normalise a batch in place with per-channel mean/std."""
    return images.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


# --- reading either kind of split ------------------------------------------------------------


def labels_of(data: ImageData) -> Tensor:
    """Every label of a split (no image is decoded)."""
    return data.labels if isinstance(data, StreamingImages) else data.tensors[1]


def images_at(data: ImageData, indices: Tensor) -> Tensor:
    """The normalised images at `indices` (a streamed split decodes them now, here)."""
    if isinstance(data, StreamingImages):
        return torch.stack([data[i][0] for i in indices.tolist()])
    return data.tensors[0][indices]


def batches_of(
    data: ImageData,
    batches: Sequence[Tensor],
    *,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """(images, labels) of each batch of sample indices, in order; a streamed split decodes
    them in its DataLoader workers (seeded by `generator`)."""
    if isinstance(data, StreamingImages):
        rows = [batch.tolist() for batch in batches]
        yield from data.loader(rows, generator=generator, pin_memory=pin_memory)
        return
    images, labels = data.tensors
    for batch in batches:
        yield images[batch], labels[batch]
