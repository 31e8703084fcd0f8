"""ResNets: CIFAR-style ResNet-20/56 (3 stages, 1x1-conv projections) and ImageNet-style
ResNet-18/50 (4 stages; below 64x64 inputs a 3x3 stride-1 stem without max pooling).

Channel groups: every channel that meets at a stage's residual adds is one group
(``layer1`` .. ``layer4``; the stem joins ``layer1`` unless layer1 opens with a projection,
as in the bottleneck ResNet-50, where the stem is its own group ``conv1``), and every inner
conv of a block is its own group (``layer1.0.conv1``, and ``.conv2`` in a bottleneck).
Module names are torchvision's, so its ResNet state_dicts load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from nestdnn.arch.config import ModelConfig
from nestdnn.arch.graph import INPUT, Graph, GraphBuilder
from nestdnn.arch.registry import Family, register_family

CIFAR_BLOCKS: dict[int, int] = {20: 3, 56: 9}
IMAGENET_LAYOUTS: dict[int, tuple[str, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    50: ("bottleneck", [3, 4, 6, 3]),
}
SMALL_INPUT_LIMIT = 64  # below this, ImageNet-style ResNets use a 3x3 stride-1 stem, no maxpool


@dataclass(frozen=True)
class Layout:
    """Block type, blocks per stage, base widths per stage, and the stem style."""

    block: str
    blocks: list[int]
    stage_widths: list[int]
    imagenet_stem: bool

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def stem_group(self) -> str:
        """The stem shares layer1's group unless layer1 opens with a projection (bottleneck)."""
        return "conv1" if self.expansion > 1 else "layer1"


def layout(arch: str, input_size: int) -> Layout:
    depth = int(arch.removeprefix("resnet"))
    if depth in CIFAR_BLOCKS:
        n = CIFAR_BLOCKS[depth]
        return Layout("basic", [n, n, n], [16, 32, 64], imagenet_stem=False)
    block, blocks = IMAGENET_LAYOUTS[depth]
    return Layout(block, blocks, [64, 128, 256, 512],
                  imagenet_stem=input_size >= SMALL_INPUT_LIMIT)


def full_widths(arch: str, input_size: int) -> dict[str, int]:
    spec = layout(arch, input_size)
    widths: dict[str, int] = {spec.stem_group: spec.stage_widths[0]}
    for s, (n, base) in enumerate(zip(spec.blocks, spec.stage_widths, strict=True), 1):
        widths[f"layer{s}"] = base * spec.expansion
        for b in range(n):
            widths[f"layer{s}.{b}.conv1"] = base
            if spec.block == "bottleneck":
                widths[f"layer{s}.{b}.conv2"] = base
    return widths


def graph(config: ModelConfig) -> Graph:
    spec = layout(config.arch, config.input_size)
    g = GraphBuilder(config)
    stem = spec.stem_group
    if spec.imagenet_stem:
        x = g.conv("conv1", INPUT, None, stem, 7, 2, padding=3)
    else:
        x = g.conv("conv1", INPUT, None, stem, 3)
    x = g.relu("relu", g.batch_norm("bn1", x, stem), response=stem)
    if spec.imagenet_stem:
        x = g.max_pool(x, 3, 2, padding=1)
    block = _bottleneck if spec.block == "bottleneck" else _basic_block
    group_in = stem
    for s, n in enumerate(spec.blocks, 1):
        group_out = f"layer{s}"
        for b in range(n):
            stride = 2 if (b == 0 and s > 1) else 1
            x = block(g, x, f"layer{s}.{b}", group_in, group_out, stride)
            group_in = group_out
    return g.build(g.linear("fc", g.global_avg_pool(x), group_in))


def _basic_block(g: GraphBuilder, x: str, name: str, group_in: str, group_out: str,
                 stride: int) -> str:
    """Two 3x3 convs; the block's output (post add, post ReLU) is a response of ``group_out``."""
    inner = f"{name}.conv1"
    y = g.conv(f"{name}.conv1", x, group_in, inner, 3, stride)
    y = g.relu(f"{name}.relu1", g.batch_norm(f"{name}.bn1", y, inner), response=inner)
    y = g.batch_norm(f"{name}.bn2", g.conv(f"{name}.conv2", y, inner, group_out, 3), group_out)
    return _join(g, x, y, name, group_in, group_out, stride)


def _bottleneck(g: GraphBuilder, x: str, name: str, group_in: str, group_out: str,
                stride: int) -> str:
    """1x1 reduce, 3x3 (the stride here, as torchvision), 1x1 expand."""
    g1, g2 = f"{name}.conv1", f"{name}.conv2"
    y = g.conv(g1, x, group_in, g1, 1)
    y = g.relu(f"{name}.relu1", g.batch_norm(f"{name}.bn1", y, g1), response=g1)
    y = g.conv(g2, y, g1, g2, 3, stride)
    y = g.relu(f"{name}.relu2", g.batch_norm(f"{name}.bn2", y, g2), response=g2)
    y = g.batch_norm(f"{name}.bn3", g.conv(f"{name}.conv3", y, g2, group_out, 1), group_out)
    return _join(g, x, y, name, group_in, group_out, stride)


def _join(g: GraphBuilder, x: str, y: str, name: str, group_in: str, group_out: str,
          stride: int) -> str:
    """Add the shortcut (a 1x1-conv projection when the group changes) and apply the ReLU."""
    identity = x
    if group_in != group_out:
        identity = g.conv(f"{name}.downsample.0", x, group_in, group_out, 1, stride)
        identity = g.batch_norm(f"{name}.downsample.1", identity, group_out)
    return g.relu(f"{name}.relu", g.add(y, identity), response=group_out)


RESNET = register_family(
    Family(
        "resnet",
        tuple(f"resnet{d}" for d in (*CIFAR_BLOCKS, *IMAGENET_LAYOUTS)),
        full_widths=full_widths,
        graph=graph,
    )
)
