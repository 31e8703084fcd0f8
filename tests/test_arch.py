"""Architectures as data: the graph's state layout and MACs are exactly the torch model's."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from nestdnn.arch import (
    ARCHS,
    Family,
    ModelConfig,
    default_widths,
    get_family,
    model_graph,
    register_family,
)
from nestdnn.errors import NestError
from nestdnn.models import build_from_config


def random_config(arch: str, seed: int, in_channels: int = 3, size: int = 32) -> ModelConfig:
    gen = torch.Generator().manual_seed(seed)
    base = default_widths(arch, size, 0.25)
    widths = {g: int(torch.randint(1, w + 1, (1,), generator=gen)) for g, w in base.items()}
    return ModelConfig(arch, in_channels, 7, size, widths)


def hooked_macs(model: nn.Module, config: ModelConfig) -> int:
    """MACs measured on the torch model with forward hooks (the reference count)."""
    total = 0

    def hook(m: nn.Module, _inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] ** 2
        else:
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, config.in_channels, config.input_size, config.input_size))
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("in_channels", "size"), [(1, 28), (3, 32), (3, 64)])
def test_state_layout_and_macs_are_the_torch_models(arch: str, in_channels: int,
                                                    size: int) -> None:
    config = random_config(arch, seed=size, in_channels=in_channels, size=size)
    graph = model_graph(config)
    model = build_from_config(config)
    state = model.state_dict()
    layout = graph.state()
    assert list(layout) == list(state)  # same keys in the same order
    params = {name for name, _ in model.named_parameters()}
    for key, spec in layout.items():
        assert spec.shape == tuple(state[key].shape), key
        assert spec.dtype == str(state[key].dtype).removeprefix("torch."), key
        assert spec.parameter == (key in params), key
    assert graph.macs() == hooked_macs(model, config)


def test_the_arch_layer_imports_no_torch() -> None:
    code = "import sys, nestdnn.arch; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_arch_lists_the_registered_ones() -> None:
    with pytest.raises(NestError, match=r"unknown arch .vgg17.; choose one of .*vgg11"):
        get_family("vgg17")


def test_an_arch_name_registers_once() -> None:
    vgg = get_family("vgg11")
    with pytest.raises(ValueError, match="already registered"):
        register_family(Family("vgg-again", ("vgg11",), vgg.full_widths, vgg.graph))
