"""Shared fixtures: small generated data sets, and the real Fashion-MNIST when installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestdnn.data import FASHION_MNIST_DIR, FASHION_MNIST_FILES, SyntheticConfig


@pytest.fixture(scope="session")
def tiny_synthetic() -> SyntheticConfig:
    """A synthetic set small enough to generate and train on in well under a second."""
    return SyntheticConfig(
        num_classes=4, in_channels=1, input_size=16, train_size=400, test_size=80
    )


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The installed Fashion-MNIST files; tests using it are skipped when they are absent."""
    missing = [
        stem
        for stem in FASHION_MNIST_FILES.values()
        if not (FASHION_MNIST_DIR / f"{stem}.gz").is_file()
    ]
    if missing:
        pytest.skip(
            f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} (missing {', '.join(missing)});"
            " install the Debian package dataset-fashion-mnist"
        )
    return FASHION_MNIST_DIR
