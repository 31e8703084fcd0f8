"""The torch backend: eager forward passes with an explicit intra-op thread count."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from profiles.latency import Runner, fixed_input
from profiles.reference import INPUT_SHAPE as REFERENCE_INPUT_SHAPE
from profiles.reference import POOL_AFTER, reference_weights


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


def reference_runner() -> Runner:
    """The reference stack (`profiles.reference`) in torch; call it under ``torch_threads``
    and ``torch.inference_mode()``."""
    layers: list[nn.Module] = []
    for i, (weight, bias) in enumerate(reference_weights()):
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weight))
            conv.bias.copy_(torch.from_numpy(bias))
        layers += [conv, nn.ReLU()]
        if i == POOL_AFTER:
            layers.append(nn.MaxPool2d(2))
    return torch_runner(nn.Sequential(*layers), REFERENCE_INPUT_SHAPE)
