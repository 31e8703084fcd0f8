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
