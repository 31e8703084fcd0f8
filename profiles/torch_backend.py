"""The torch backend: eager forward passes with an explicit intra-op thread count."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from profiles.latency import Runner, fixed_input


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run torch with exactly ``threads`` intra-op threads, restoring the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def torch_input(shape: Sequence[int]) -> torch.Tensor:
    """``fixed_input`` as a tensor."""
    return torch.from_numpy(fixed_input(shape))


def torch_runner(model: nn.Module, shape: Sequence[int]) -> Runner:
    """One eager forward pass of ``model`` (eval mode) on the fixed input; call it under
    ``torch.inference_mode()``."""
    x = torch_input(shape)
    model.eval()

    def run() -> torch.Tensor:
        return model(x)

    return run


REFERENCE_INPUT_SHAPE = (1, 28, 28)


def reference_runner() -> Runner:
    """The machine's yardstick: a fixed, seeded conv stack (about 5.5 M MACs on 1x28x28).

    Timed in the same rounds as a backend's descendants, its median says how fast the
    machine was while they were measured, so latencies measured at different times can be
    compared as ratios to it. Call it under ``torch_threads`` and ``torch.inference_mode()``.
    """
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return torch_runner(model, REFERENCE_INPUT_SHAPE)
