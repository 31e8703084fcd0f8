"""VGG-11/13/16/19 with batch norm: torchvision's ``vgg*_bn`` features, a CIFAR-style head.

Each conv's output channels are one channel group, named by the conv's module path
(``features.0``, ``features.3``, ...). The head is global average pooling and one linear
layer (``classifier``), not torchvision's 4096-wide MLP.
"""

from __future__ import annotations

from nestdnn.arch.config import ModelConfig
from nestdnn.arch.graph import INPUT, Graph, GraphBuilder
from nestdnn.arch.registry import Family, register_family

LAYOUTS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _depth(arch: str) -> int:
    return int(arch.removeprefix("vgg"))


def full_widths(arch: str, input_size: int) -> dict[str, int]:
    """One group per conv, named ``features.N`` by the conv's index in torchvision's list."""
    widths: dict[str, int] = {}
    position = 0
    for item in LAYOUTS[_depth(arch)]:
        if item == "M":
            position += 1
        else:
            widths[f"features.{position}"] = int(item)
            position += 3  # conv, batch norm, ReLU
    return widths


def graph(config: ModelConfig) -> Graph:
    g = GraphBuilder(config)
    x, group_in, position = INPUT, None, 0
    for item in LAYOUTS[_depth(config.arch)]:
        if item == "M":
            x = g.max_pool(x, 2, 2, ceil_mode=True)
            position += 1
            continue
        group = f"features.{position}"
        x = g.conv(group, x, group_in, group, 3, bias=True)
        x = g.batch_norm(f"features.{position + 1}", x, group)
        x = g.relu(f"features.{position + 2}", x, response=group)
        group_in, position = group, position + 3
    assert group_in is not None
    return g.build(g.linear("classifier", g.global_avg_pool(x), group_in))


VGG = register_family(
    Family("vgg", tuple(f"vgg{d}" for d in LAYOUTS), full_widths=full_widths, graph=graph)
)
