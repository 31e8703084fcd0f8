"""MobileNetV2 (Sandler et al. 2018) as torchvision builds it: inverted residual blocks of a
1x1 expansion conv, a 3x3 depthwise conv (ReLU6 after both) and a linear 1x1 projection.

Channel groups (pruned together, nested together):

* ``features.0``: the stem conv's outputs; the first block (expansion 1) has no expansion
  conv, so its depthwise conv and its projection's input are this group too.
* ``features.N.conv.0`` (N = 2..17): block N's hidden channels: the expansion conv's outputs,
  its depthwise conv (which maps each channel to itself) and the projection's inputs.
* ``stage1`` .. ``stage7``: the outputs of one stage's blocks, which the residual adds couple
  (stage s is row s of torchvision's setting: 16, 24, 32, 64, 96, 160 and 320 channels).
* ``features.18``: the last 1x1 conv's outputs (1280), read by the classifier.

A stage's responses for TRR are its projections' batch norms (a linear bottleneck has no
activation); the other groups' are their ReLU6s. Module names are torchvision's
(``features.0.0``, ``features.3.conv.1.0``, ``classifier.1``), so its state_dicts load as
they are. From 64x64 inputs the strides are torchvision's (a 224x224 input ends at 7x7);
below that, as in the usual CIFAR adaptations, the stem and the first stride-2 stage (24
channels) keep stride 1, so that a 28x28 or 32x32 input ends at 4x4 rather than 1x1.
"""

from __future__ import annotations

from dataclasses import dataclass

from nestdnn.arch.config import ModelConfig
from nestdnn.arch.graph import INPUT, Graph, GraphBuilder
from nestdnn.arch.registry import Family, register_family

ARCH = "mobilenetv2"
SETTING: tuple[tuple[int, int, int, int], ...] = (
    # expansion t, channels c, blocks n, stride s (torchvision's inverted_residual_setting)
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_WIDTH = 32
LAST_WIDTH = 1280
DROPOUT = 0.2
SMALL_INPUT_LIMIT = 64  # below this: stride 1 in the stem and in stage 2 (CIFAR-style)
ROUND_TO = 8  # torchvision's round_nearest for width multipliers
STEM, LAST = "features.0", "features.18"


@dataclass(frozen=True)
class Block:
    """One inverted residual block: ``features.{index}``, in stage ``stage`` (1-based)."""

    index: int
    stage: int
    expansion: int
    stride: int
    first: bool  # the stage's first block: it changes width, so it has no residual add

    @property
    def name(self) -> str:
        return f"features.{self.index}"

    @property
    def hidden(self) -> str | None:
        """The block's own group (its expanded channels); None without an expansion conv."""
        return f"{self.name}.conv.0" if self.expansion != 1 else None

    @property
    def output(self) -> str:
        return f"stage{self.stage}"


def blocks(input_size: int) -> list[Block]:
    """Blocks 1..17 with the strides for ``input_size`` (CIFAR-style below 64)."""
    small = input_size < SMALL_INPUT_LIMIT
    found: list[Block] = []
    for stage, (t, _c, n, s) in enumerate(SETTING, 1):
        stride = 1 if small and stage == 2 else s
        for i in range(n):
            found.append(Block(len(found) + 1, stage, t, stride if i == 0 else 1, i == 0))
    return found


def _widths(stem: int, stages: list[int], last: int, input_size: int) -> dict[str, int]:
    """Every group's width, given the stem's, each stage's and the last conv's."""
    widths = {STEM: stem}
    width_in = stem
    for block in blocks(input_size):
        if block.first:
            widths[block.output] = stages[block.stage - 1]
        if block.hidden is not None:
            widths[block.hidden] = round(width_in * block.expansion)
        width_in = stages[block.stage - 1]
    widths[LAST] = last
    return widths


def full_widths(_arch: str, input_size: int) -> dict[str, int]:
    return _widths(STEM_WIDTH, [c for _t, c, _n, _s in SETTING], LAST_WIDTH, input_size)


def make_divisible(value: float, divisor: int = ROUND_TO) -> int:
    """torchvision's ``_make_divisible``: the nearest multiple, never 10 % below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def scale_widths(_arch: str, input_size: int, width_mult: float) -> dict[str, int]:
    """torchvision's width multiplier: stem and stages rounded to multiples of 8, hidden
    widths six times their input, the last conv kept at 1280 (``width_mult`` <= 1)."""
    stages = [make_divisible(c * width_mult) for _t, c, _n, _s in SETTING]
    return _widths(make_divisible(STEM_WIDTH * width_mult), stages, LAST_WIDTH, input_size)


def graph(config: ModelConfig) -> Graph:
    g = GraphBuilder(config)
    stride = 1 if config.input_size < SMALL_INPUT_LIMIT else 2
    x = g.conv("features.0.0", INPUT, None, STEM, 3, stride)
    x = g.relu6("features.0.2", g.batch_norm("features.0.1", x, STEM), response=STEM)
    group_in = STEM
    for block in blocks(config.input_size):
        x = _inverted_residual(g, x, block, group_in)
        group_in = block.output
    x = g.conv(f"{LAST}.0", x, group_in, LAST, 1)
    x = g.relu6(f"{LAST}.2", g.batch_norm(f"{LAST}.1", x, LAST), response=LAST)
    x = g.dropout(g.global_avg_pool(x), DROPOUT)
    return g.build(g.linear("classifier.1", x, LAST))


def _inverted_residual(g: GraphBuilder, x: str, block: Block, group_in: str) -> str:
    """Expansion (if any), depthwise, projection; the input added back inside a stage."""
    name, hidden = block.name, block.hidden or group_in
    y, layer = x, 0
    if block.hidden is not None:
        y = g.conv(f"{name}.conv.0.0", x, group_in, hidden, 1)
        y = g.relu6(f"{name}.conv.0.2", g.batch_norm(f"{name}.conv.0.1", y, hidden),
                    response=hidden)
        layer = 1
    prefix = f"{name}.conv.{layer}"
    y = g.conv(f"{prefix}.0", y, hidden, hidden, 3, block.stride, depthwise=True)
    y = g.relu6(f"{prefix}.2", g.batch_norm(f"{prefix}.1", y, hidden), response=hidden)
    y = g.conv(f"{name}.conv.{layer + 1}", y, hidden, block.output, 1)
    y = g.batch_norm(f"{name}.conv.{layer + 2}", y, block.output, response=block.output)
    return y if block.first else g.add(x, y)


MOBILENET = register_family(
    Family("mobilenet", (ARCH,), full_widths=full_widths, graph=graph, scale_widths=scale_widths)
)
