"""Top-1 accuracy of every descendant on the test split of the model's data set, batched.

The accuracy pass runs on any device (``--device``); a large image folder's test split is
streamed (decoded per batch), as `nestdnn train` would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from nestdnn.data import (
    DEFAULT_WORKERS,
    ImageData,
    StreamingImages,
    SyntheticConfig,
    load_dataset,
    wants_streaming,
)
from nestdnn.errors import NestError
from nestdnn.nested import load_descendant
from nestdnn.nestfile import Manifest
from nestdnn.training import evaluate

log = logging.getLogger(__name__)

NORMALIZATION_TOLERANCE = 1e-4


def load_test_split(
    manifest: Manifest,
    dataset: str,
    data_dir: str | Path | None,
    workers: int = DEFAULT_WORKERS,
) -> ImageData:
    """The test split of ``dataset`` as the model sees it: its classes, size and normalisation.

    The split is resized to the model's input size, restricted to the model's classes (in the
    model's order, by name), and normalised with the manifest's mean/std. An image folder too
    large for memory is streamed (``workers`` processes decode it).
    """
    arch = manifest.arch
    splits = load_dataset(
        dataset,
        data_dir,
        classes=manifest.class_names or None,
        input_size=arch.input_size,
        synthetic=SyntheticConfig(
            num_classes=arch.num_classes, in_channels=arch.in_channels, input_size=arch.input_size
        ),
        streaming=wants_streaming(dataset, data_dir, arch.input_size),
        workers=workers,
    )
    if (splits.in_channels, splits.num_classes) != (arch.in_channels, arch.num_classes):
        raise NestError(
            f"{dataset} has {splits.in_channels}-channel images in {splits.num_classes} classes;"
            f" the model expects {arch.in_channels} channels and {arch.num_classes} classes"
        )
    wanted = (manifest.normalization.mean, manifest.normalization.std)
    if isinstance(splits.test, StreamingImages):
        _check_channels(splits.test.mean, wanted[0])
        return splits.test.with_normalisation(*wanted)
    images, labels = splits.test.tensors
    images = renormalise(images, (splits.mean, splits.std), wanted)
    return TensorDataset(images, labels)


def _check_channels(current: Sequence[float], wanted: Sequence[float]) -> None:
    if len(current) != len(wanted):
        raise NestError(
            f"the model is normalised over {len(wanted)} channels, the data has {len(current)}"
        )


def renormalise(
    images: torch.Tensor,
    current: tuple[Sequence[float], Sequence[float]],
    wanted: tuple[Sequence[float], Sequence[float]],
) -> torch.Tensor:
    """Re-express images normalised with ``current`` (mean, std) in the ``wanted`` one."""
    cur_mean, cur_std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in current)
    new_mean, new_std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in wanted)
    if cur_mean.shape != new_mean.shape:
        raise NestError(
            f"the model is normalised over {new_mean.numel()} channels,"
            f" the data has {cur_mean.numel()}"
        )
    if torch.allclose(cur_mean, new_mean, atol=NORMALIZATION_TOLERANCE) and torch.allclose(
        cur_std, new_std, atol=NORMALIZATION_TOLERANCE
    ):
        return images
    log.info("normalising the test split with the model's mean/std")
    return (images * cur_std + cur_mean - new_mean) / new_std


def accuracy(
    model: nn.Module, test: ImageData, batch_size: int, device: torch.device | str = "cpu"
) -> float:
    """Top-1 accuracy of ``model`` (eval mode, inference mode) on ``test``, on ``device``."""
    if len(test) == 0:
        raise NestError("the test split is empty")
    return evaluate(model.to(device).eval(), test, batch_size)


def descendant_accuracies(
    nest_path: Path,
    indices: Sequence[int],
    test: ImageData,
    batch_size: int = 256,
    after_each: Callable[[], None] | None = None,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Test accuracy of each descendant in ``indices``, each loaded with ``load_descendant``,
    on ``device``."""
    accuracies = []
    for k in indices:
        accuracies.append(accuracy(load_descendant(nest_path, k), test, batch_size, device))
        if after_each is not None:
            after_each()
    return accuracies
