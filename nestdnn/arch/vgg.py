"""VGG-11/13/16/19 with batch norm: torchvision's ``vgg*_bn`` features, a CIFAR-style head;
and ``vgg16-tv``, torchvision's plain ``vgg16`` exactly (no batch norm, the 4096-wide MLP).

Each conv's output channels are one channel group, named by the conv's module path
(``features.0``, ``features.3``, ...). The ``vgg*`` head is global average pooling and one
linear layer (``classifier``).

``vgg16-tv`` pools in floor mode, as torchvision (below 32x32 inputs, where torchvision's
VGG cannot run, in ceil mode), and its two hidden layers are channel groups too
(``classifier.0``, ``classifier.3``). torchvision flattens a 7x7 adaptive average pool of the
features into its first linear layer, whose input dimension (channels x 49) no channel group
can index; here that layer is the same linear map written as a conv over the feature map,
``classifier.0`` with a (4096, C, k, k) weight (k: the feature map's size, 7 at 224x224),
followed by a flatten of its 1x1 output. `nestdnn.importers` reshapes torchvision's weight
into it (and folds the adaptive pooling in when the map is not 7x7).
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

TV_ARCH = "vgg16-tv"
TV_HIDDEN = 4096
TV_DROPOUT = 0.5
TV_POOLED_SIZE = 7  # torchvision's AdaptiveAvgPool2d((7, 7)) before the classifier
TV_FLOOR_MODE_FROM = 32  # smaller inputs pool in ceil mode (torchvision's VGG cannot run)


def tv_full_widths(_arch: str, _input_size: int) -> dict[str, int]:
    """Groups ``features.N`` (torchvision's indices: conv, ReLU) and the two hidden layers."""
    widths: dict[str, int] = {}
    position = 0
    for item in LAYOUTS[16]:
        if item == "M":
            position += 1
        else:
            widths[f"features.{position}"] = int(item)
            position += 2  # conv, ReLU
    return widths | {"classifier.0": TV_HIDDEN, "classifier.3": TV_HIDDEN}


def tv_feature_size(input_size: int) -> int:
    """The side of vgg16-tv's last feature map for a square input of ``input_size``."""
    ceil_mode = input_size < TV_FLOOR_MODE_FROM
    size = input_size
    for item in LAYOUTS[16]:
        if item == "M":
            size = -(-size // 2) if ceil_mode else size // 2
    return size


def tv_graph(config: ModelConfig) -> Graph:
    g = GraphBuilder(config)
    ceil_mode = config.input_size < TV_FLOOR_MODE_FROM
    x, group_in, position = INPUT, None, 0
    for item in LAYOUTS[16]:
        if item == "M":
            x = g.max_pool(x, 2, 2, ceil_mode=ceil_mode)
            position += 1
            continue
        group = f"features.{position}"
        x = g.conv(group, x, group_in, group, 3, bias=True)
        x = g.relu(f"features.{position + 1}", x, response=group)
        group_in, position = group, position + 2
    assert group_in is not None
    # torchvision's Linear(C * 7 * 7, 4096) on the pooled map, as a conv over the whole map
    x = g.conv("classifier.0", x, group_in, "classifier.0", tv_feature_size(config.input_size),
               bias=True, padding=0)
    x = g.relu("classifier.1", g.global_avg_pool(x), response="classifier.0")  # 1x1: a flatten
    x = g.linear("classifier.3", g.dropout(x, TV_DROPOUT), "classifier.0", "classifier.3")
    x = g.relu("classifier.4", x, response="classifier.3")
    return g.build(g.linear("classifier.6", g.dropout(x, TV_DROPOUT), "classifier.3"))


VGG_TV = register_family(
    Family("vgg-tv", (TV_ARCH,), full_widths=tv_full_widths, graph=tv_graph)
)
