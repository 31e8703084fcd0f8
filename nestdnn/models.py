"""Model families (VGG, ResNet) built from a width configuration, with declared channel groups.

A *channel group* is a set of channels that must be kept or removed together: one conv's
output channels in VGG; in a ResNet, all channels meeting at a stage's residual adds, plus one
group per inner conv of each block. Every conv / BN / linear layer is tagged at construction
with the group(s) that index its tensors, so slicing a model to fewer channels, counting, and
hooking responses are generic over families (see ``param_axes`` and ``extract``).

Module names follow torchvision's (``features.N`` for VGG; ``conv1``, ``bn1``, ``layerS.B.*``,
``downsample.0/1``, ``fc`` for ResNet). The VGG classifier is a single linear layer after
global average pooling (the CIFAR-style head), not torchvision's 4096-wide MLP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from nestdnn.errors import NestError

GroupAxes = tuple[str | None, ...]

VGG_LAYOUTS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
CIFAR_RESNET_BLOCKS: dict[int, int] = {20: 3, 56: 9}
IMAGENET_RESNET_LAYOUTS: dict[int, tuple[str, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    50: ("bottleneck", [3, 4, 6, 3]),
}
ARCHS: tuple[str, ...] = (
    *(f"vgg{d}" for d in VGG_LAYOUTS),
    *(f"resnet{d}" for d in CIFAR_RESNET_BLOCKS),
    *(f"resnet{d}" for d in IMAGENET_RESNET_LAYOUTS),
)
SMALL_INPUT_LIMIT = 64  # below this, ImageNet-style ResNets use a 3x3 stride-1 stem, no maxpool


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: architecture, I/O shape and per-group widths."""

    arch: str
    in_channels: int
    num_classes: int
    input_size: int
    widths: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "widths": dict(self.widths),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        if not isinstance(data, Mapping):
            raise NestError(f"model config must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("arch", "in_channels", "num_classes", "input_size", "widths")
                   if k not in data]
        if missing:
            raise NestError(f"model config is missing {', '.join(missing)}")
        widths = data["widths"]
        if not isinstance(widths, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in widths.items()
        ):
            raise NestError("model config 'widths' must map group names to integers")
        for key in ("in_channels", "num_classes", "input_size"):
            if not isinstance(data[key], int) or data[key] < 1:
                raise NestError(f"model config '{key}' must be a positive integer")
        return cls(
            arch=str(data["arch"]),
            in_channels=data["in_channels"],
            num_classes=data["num_classes"],
            input_size=data["input_size"],
            widths=dict(widths),
        )


def _tag(module: nn.Module, out_group: str | None, in_group: str | None = None) -> nn.Module:
    """Record which channel groups index the module's output (and input) channels."""
    module.nest_out = out_group
    module.nest_in = in_group
    return module


def _respond(module: nn.Module, group: str) -> nn.Module:
    """Mark a module whose output is a post-BN, post-ReLU response of ``group``'s channels."""
    module.nest_response = group
    return module


def conv_bn(
    c_in: int, c_out: int, g_in: str | None, g_out: str, kernel: int, stride: int = 1,
    bias: bool = False,
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A conv and its batch norm, tagged with their channel groups."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias)
    return _tag(conv, g_out, g_in), _tag(nn.BatchNorm2d(c_out), g_out)


class NestNet(nn.Module):
    """Base of all families: config round trip, group bookkeeping, counting and slicing."""

    config: ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self._macs: int | None = None

    def groups(self) -> dict[str, int]:
        """Channel groups in declaration order with their widths."""
        return dict(self.config.widths)

    def param_axes(self) -> dict[str, GroupAxes]:
        """For every state_dict entry, the group indexing each dimension (None: not grouped)."""
        axes: dict[str, GroupAxes] = {}
        for prefix, module in self.named_modules():
            if not hasattr(module, "nest_out"):
                continue
            out_g, in_g = module.nest_out, module.nest_in
            for name, tensor in [*module.named_parameters(recurse=False),
                                 *module.named_buffers(recurse=False)]:
                key = f"{prefix}.{name}" if prefix else name
                if isinstance(module, nn.Conv2d) and name == "weight":
                    axes[key] = (out_g, in_g, None, None)
                elif isinstance(module, nn.Linear) and name == "weight":
                    axes[key] = (None, in_g)
                else:
                    axes[key] = (out_g,) * tensor.dim()
        return axes

    def producers(self) -> dict[str, list[str]]:
        """For every group, the names of the convs whose output channels are that group."""
        return self._names_by_group(nn.Conv2d)

    def norms(self) -> dict[str, list[str]]:
        """For every group, the names of the batch norms over that group's channels."""
        return self._names_by_group(nn.BatchNorm2d)

    def _names_by_group(self, kind: type[nn.Module]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {g: [] for g in self.config.widths}
        for name, module in self.named_modules():
            if isinstance(module, kind):
                found[module.nest_out].append(name)
        return found

    def response_modules(self) -> dict[str, list[nn.Module]]:
        """For every group, the modules whose outputs are the group's post-BN post-ReLU maps."""
        found: dict[str, list[nn.Module]] = {g: [] for g in self.config.widths}
        for module in self.modules():
            group = getattr(module, "nest_response", None)
            if group is not None:
                found[group].append(module)
        return found

    def count_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def count_macs(self) -> int:
        """Multiply-accumulates of one forward pass on a single input (convs and linears)."""
        if self._macs is None:
            self._macs = count_macs(self, self.config.in_channels, self.config.input_size)
        return self._macs

    def extract(self, indices: Mapping[str, Tensor]) -> NestNet:
        """A smaller dense model keeping ``indices[g]`` (in this model's numbering) of each group.

        Groups missing from ``indices`` keep all channels. Order matters: the new model's
        channel ``j`` of group ``g`` is this model's channel ``indices[g][j]``.
        """
        full = {g: torch.arange(w) for g, w in self.config.widths.items()}
        for g, idx in indices.items():
            full[g] = validate_indices(g, idx, self.config.widths)
        child = build_from_config(
            replace(self.config, widths={g: int(i.numel()) for g, i in full.items()})
        )
        child.load_state_dict(slice_state_dict(self.state_dict(), self.param_axes(), full))
        return child


def validate_indices(group: str, idx: Tensor, widths: Mapping[str, int]) -> Tensor:
    """Check that ``idx`` is a non-empty set of distinct channels of ``group``."""
    if group not in widths:
        raise NestError(f"unknown channel group '{group}'")
    idx = torch.as_tensor(idx, dtype=torch.long).flatten()
    if idx.numel() == 0:
        raise NestError(f"group '{group}' must keep at least one channel")
    if int(idx.min()) < 0 or int(idx.max()) >= widths[group]:
        raise NestError(
            f"group '{group}' has {widths[group]} channels; "
            f"indices must lie in [0, {widths[group]})"
        )
    if torch.unique(idx).numel() != idx.numel():
        raise NestError(f"group '{group}' has repeated channel indices")
    return idx


def slice_state_dict(
    state: Mapping[str, Tensor], axes: Mapping[str, GroupAxes], indices: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Select ``indices[g]`` along every dimension indexed by group ``g``."""
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        for dim, group in enumerate(axes.get(key, ())):
            if group is not None:
                tensor = tensor.index_select(dim, indices[group])
        out[key] = tensor.clone()
    return out


def prefix_state_dict(
    state: Mapping[str, Tensor], axes: Mapping[str, GroupAxes], widths: Mapping[str, int]
) -> dict[str, Tensor]:
    """Keep the first ``widths[g]`` channels of every group (the nested sub-model)."""
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        for dim, group in enumerate(axes.get(key, ())):
            if group is not None:
                tensor = tensor.narrow(dim, 0, widths[group])
        out[key] = tensor
    return out


def count_macs(model: nn.Module, in_channels: int, input_size: int) -> int:
    """Multiply-accumulates of convs and linears for one input, measured with forward hooks."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple[Tensor], out: Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: tuple[Tensor], out: Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, in_channels, input_size, input_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


# --------------------------------------------------------------------------------------- VGG


class VGG(NestNet):
    """VGG-11/13/16/19 with BN; ``features.N`` as in torchvision's ``vgg*_bn`` (conv bias too)."""

    def __init__(self, config: ModelConfig, depth: int) -> None:
        super().__init__(config)
        layers: list[nn.Module] = []
        c_in, g_in = config.in_channels, None
        for item in VGG_LAYOUTS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            group = f"features.{len(layers)}"
            conv, bn = conv_bn(c_in, config.widths[group], g_in, group, 3, bias=True)
            layers += [conv, bn, _respond(nn.ReLU(), group)]
            c_in, g_in = config.widths[group], group
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _tag(nn.Linear(c_in, config.num_classes), None, g_in)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg_full_widths(depth: int) -> dict[str, int]:
    widths: dict[str, int] = {}
    position = 0
    for item in VGG_LAYOUTS[depth]:
        if item == "M":
            position += 1
        else:
            widths[f"features.{position}"] = int(item)
            position += 3
    return widths


# ------------------------------------------------------------------------------------ ResNet


class BasicBlock(nn.Module):
    """Two 3x3 convs; the block's output (post add, post ReLU) is a response of ``g_out``."""

    def __init__(self, widths: Mapping[str, int], g_in: str, g_out: str, name: str,
                 stride: int, downsample: bool) -> None:
        super().__init__()
        inner = f"{name}.conv1"
        self.conv1, self.bn1 = conv_bn(widths[g_in], widths[inner], g_in, inner, 3, stride)
        self.relu1 = _respond(nn.ReLU(), inner)
        self.conv2, self.bn2 = conv_bn(widths[inner], widths[g_out], inner, g_out, 3)
        self.downsample = _downsample(widths, g_in, g_out, stride) if downsample else None
        self.relu = nn.ReLU()
        _respond(self, g_out)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision), 1x1 expand."""

    def __init__(self, widths: Mapping[str, int], g_in: str, g_out: str, name: str,
                 stride: int, downsample: bool) -> None:
        super().__init__()
        g1, g2 = f"{name}.conv1", f"{name}.conv2"
        self.conv1, self.bn1 = conv_bn(widths[g_in], widths[g1], g_in, g1, 1)
        self.relu1 = _respond(nn.ReLU(), g1)
        self.conv2, self.bn2 = conv_bn(widths[g1], widths[g2], g1, g2, 3, stride)
        self.relu2 = _respond(nn.ReLU(), g2)
        self.conv3, self.bn3 = conv_bn(widths[g2], widths[g_out], g2, g_out, 1)
        self.downsample = _downsample(widths, g_in, g_out, stride) if downsample else None
        self.relu = nn.ReLU()
        _respond(self, g_out)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        return self.relu(out + identity)


def _downsample(widths: Mapping[str, int], g_in: str, g_out: str, stride: int) -> nn.Sequential:
    """The 1x1-conv projection shortcut (torchvision's ``downsample.0`` / ``downsample.1``)."""
    conv = nn.Conv2d(widths[g_in], widths[g_out], 1, stride=stride, bias=False)
    return nn.Sequential(_tag(conv, g_out, g_in), _tag(nn.BatchNorm2d(widths[g_out]), g_out))


@dataclass(frozen=True)
class ResNetLayout:
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


def resnet_layout(depth: int, input_size: int) -> ResNetLayout:
    if depth in CIFAR_RESNET_BLOCKS:
        n = CIFAR_RESNET_BLOCKS[depth]
        return ResNetLayout("basic", [n, n, n], [16, 32, 64], imagenet_stem=False)
    block, blocks = IMAGENET_RESNET_LAYOUTS[depth]
    return ResNetLayout(block, blocks, [64, 128, 256, 512],
                        imagenet_stem=input_size >= SMALL_INPUT_LIMIT)


def resnet_full_widths(depth: int, input_size: int) -> dict[str, int]:
    layout = resnet_layout(depth, input_size)
    widths: dict[str, int] = {layout.stem_group: layout.stage_widths[0]}
    for s, (n, base) in enumerate(zip(layout.blocks, layout.stage_widths, strict=True), 1):
        widths[f"layer{s}"] = base * layout.expansion
        for b in range(n):
            widths[f"layer{s}.{b}.conv1"] = base
            if layout.block == "bottleneck":
                widths[f"layer{s}.{b}.conv2"] = base
    return widths


class ResNet(NestNet):
    """CIFAR-style ResNet-20/56 (3 stages) and ImageNet-style ResNet-18/50 (4 stages)."""

    def __init__(self, config: ModelConfig, depth: int) -> None:
        super().__init__(config)
        layout = resnet_layout(depth, config.input_size)
        w, stem = config.widths, layout.stem_group
        if layout.imagenet_stem:
            self.conv1 = _tag(nn.Conv2d(config.in_channels, w[stem], 7, 2, 3, bias=False), stem)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = _tag(nn.Conv2d(config.in_channels, w[stem], 3, 1, 1, bias=False), stem)
            self.maxpool = nn.Identity()
        self.bn1 = _tag(nn.BatchNorm2d(w[stem]), stem)
        self.relu = _respond(nn.ReLU(), stem)
        block_cls = Bottleneck if layout.block == "bottleneck" else BasicBlock
        g_in = stem
        for s, n in enumerate(layout.blocks, 1):
            g_out, blocks = f"layer{s}", []
            for b in range(n):
                stride = 2 if (b == 0 and s > 1) else 1
                blocks.append(block_cls(w, g_in, g_out, f"layer{s}.{b}", stride, g_in != g_out))
                g_in = g_out
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.num_stages = len(layout.blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = _tag(nn.Linear(w[g_in], config.num_classes), None, g_in)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------- builders


def _parse_arch(arch: str) -> tuple[str, int]:
    if arch not in ARCHS:
        raise NestError(f"unknown arch '{arch}'; choose one of {', '.join(ARCHS)}")
    family = "vgg" if arch.startswith("vgg") else "resnet"
    return family, int(arch[len(family):])


def full_widths(arch: str, input_size: int) -> dict[str, int]:
    """Widths of the architecture at width multiplier 1 (the upper bound of any config)."""
    family, depth = _parse_arch(arch)
    return vgg_full_widths(depth) if family == "vgg" else resnet_full_widths(depth, input_size)


def default_widths(arch: str, input_size: int, width_mult: float = 1.0) -> dict[str, int]:
    """Every group's full width scaled by ``width_mult`` (rounded, at least 1)."""
    if not 0 < width_mult <= 1:
        raise NestError(f"width_mult must be in (0, 1], got {width_mult}")
    return {g: max(1, math.floor(w * width_mult + 0.5))
            for g, w in full_widths(arch, input_size).items()}


def build_from_config(config: ModelConfig | Mapping[str, Any]) -> NestNet:
    """Rebuild a model (random weights) from its config, validating the widths."""
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    family, depth = _parse_arch(config.arch)
    limits = full_widths(config.arch, config.input_size)
    if set(config.widths) != set(limits):
        extra = sorted(set(config.widths) - set(limits))
        missing = sorted(set(limits) - set(config.widths))
        raise NestError(
            f"widths do not match {config.arch}'s channel groups"
            + (f"; unknown: {', '.join(extra[:5])}" if extra else "")
            + (f"; missing: {', '.join(missing[:5])}" if missing else "")
        )
    for g, w in config.widths.items():
        if not 1 <= w <= limits[g]:
            raise NestError(f"width of group '{g}' is {w}; {config.arch} allows 1..{limits[g]}")
    if config.input_size < 8:
        raise NestError(f"input_size must be at least 8, got {config.input_size}")
    widths = {g: config.widths[g] for g in limits}  # canonical (declaration) order
    config = replace(config, widths=widths)
    return VGG(config, depth) if family == "vgg" else ResNet(config, depth)


def build_model(
    arch: str,
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
    width_mult: float = 1.0,
    widths: Mapping[str, int] | None = None,
) -> NestNet:
    """Build ``arch`` at ``width_mult`` of its full width, or at explicit per-group ``widths``."""
    if widths is None:
        widths = default_widths(arch, input_size, width_mult)
    return build_from_config(
        ModelConfig(arch, in_channels, num_classes, input_size, dict(widths))
    )
