"""A model as data: the layer graph every family describes, without torch.

A family turns a `ModelConfig` into a `Graph`: an ordered list of layer nodes over named
values (``"input"``, then one value per node). Everything else derives from the graph alone:

* the torch module (`nestdnn.models.NestNet` interprets the graph),
* the state layout: every tensor's key, shape, dtype and the channel group indexing each of
  its dimensions (`Graph.state`), which the `.nest` reader needs without torch,
* the multiply-accumulates of one forward pass (`Graph.macs`), by shape inference,
* the ONNX graph the default inference backend runs (`nestdnn.onnx_graph`).

Nodes that hold tensors or are hooked (convs, batch norms, linears, activations) carry the
module path of their torch module (``features.0``, ``layer1.0.conv1``): state_dict keys are
``{name}.{tensor}``, following torchvision's names where torchvision has the architecture.
A channel dimension is *grouped* when its size is the width of a channel group; the model's
input channels and the classifier's classes are not grouped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from nestdnn.arch.config import ModelConfig

INPUT = "input"
GroupAxes = tuple[str | None, ...]
"""For each dimension of a tensor, the channel group indexing it (None: not grouped)."""


@dataclass(frozen=True)
class Node:
    """One layer: the values it reads and the value it writes."""

    inputs: tuple[str, ...]
    output: str


@dataclass(frozen=True)
class Conv(Node):
    """A 2-D convolution from ``in_group`` (None: the model's input) to ``out_group``.

    ``depthwise`` convolves every channel on its own (groups = channels, so ``in_group`` is
    ``out_group``).
    """

    name: str
    in_group: str | None
    out_group: str
    kernel: int
    stride: int = 1
    padding: int = 0
    depthwise: bool = False
    bias: bool = False


@dataclass(frozen=True)
class BatchNorm(Node):
    """Batch normalisation over ``group``'s channels (eps 1e-5, momentum 0.1).

    ``response`` names the group whose response this is when no activation follows (a linear
    bottleneck's output: MobileNetV2's projections); None for the usual conv-BN-ReLU.
    """

    name: str
    group: str
    eps: float = 1e-5
    response: str | None = None


@dataclass(frozen=True)
class Activation(Node):
    """ReLU or ReLU6; ``response`` names the group whose post-BN post-ReLU map this is (TRR)."""

    name: str
    kind: Literal["relu", "relu6"] = "relu"
    response: str | None = None


@dataclass(frozen=True)
class MaxPool(Node):
    kernel: int
    stride: int
    padding: int = 0
    ceil_mode: bool = False


@dataclass(frozen=True)
class Add(Node):
    """Elementwise sum of the two inputs (a residual connection)."""


@dataclass(frozen=True)
class GlobalAvgPool(Node):
    """Mean over the spatial dimensions, flattened: (N, C, H, W) -> (N, C)."""


@dataclass(frozen=True)
class Dropout(Node):
    """Dropout with probability ``p`` while training; the identity in eval mode."""

    p: float


@dataclass(frozen=True)
class Linear(Node):
    """A fully connected layer from ``in_group`` to ``out_group`` (None: the classes)."""

    name: str
    in_group: str
    out_group: str | None = None
    bias: bool = True


@dataclass(frozen=True)
class TensorSpec:
    """One state_dict entry at given widths: shape, dtype, grouped axes, parameter or buffer."""

    shape: tuple[int, ...]
    axes: GroupAxes
    dtype: Literal["float32", "int64"] = "float32"
    parameter: bool = True

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * (8 if self.dtype == "int64" else 4)


@dataclass(frozen=True)
class Shape:
    """A value's shape for one input image: channels and spatial size (1x1 once pooled)."""

    channels: int
    height: int = 1
    width: int = 1


@dataclass(frozen=True)
class Graph:
    """A model's layers in execution order, at the widths of ``config``."""

    config: ModelConfig
    nodes: tuple[Node, ...]
    output: str

    def width(self, group: str | None) -> int:
        """Channels of ``group``; None is the model's input (for convs) or the classes."""
        return self.config.in_channels if group is None else self.config.widths[group]

    def state(self) -> dict[str, TensorSpec]:
        """Every state_dict entry in torch's order (module tree order, parameters first)."""
        modules = {node.name: dict(self._tensors(node)) for node in self.modules()}
        return {
            f"{module}.{key}": spec
            for module in _tree_order(modules)
            for key, spec in sorted(modules[module].items(), key=lambda kv: not kv[1].parameter)
        }

    def modules(self) -> list[Conv | BatchNorm | Activation | Linear]:
        """The nodes that are torch modules (they have a module path), in graph order."""
        return [n for n in self.nodes if isinstance(n, Conv | BatchNorm | Activation | Linear)]

    def macs(self) -> int:
        """Multiply-accumulates of convs and linears for one input image."""
        shapes = self.shapes()
        total = 0
        for node in self.nodes:
            out = shapes[node.output]
            if isinstance(node, Conv):
                per_output = 1 if node.depthwise else self.width(node.in_group)
                total += out.channels * out.height * out.width * per_output * node.kernel**2
            elif isinstance(node, Linear):
                total += out.channels * self.width(node.in_group)
        return total

    def shapes(self) -> dict[str, Shape]:
        """The shape of every value for one input image of the config's size."""
        size = self.config.input_size
        shapes = {INPUT: Shape(self.config.in_channels, size, size)}
        for node in self.nodes:
            shapes[node.output] = self._infer(node, [shapes[v] for v in node.inputs])
        return shapes

    def responses(self) -> dict[str, list[str]]:
        """For every group, the modules whose output is its response (TRR hooks them).

        These are activations and, in a linear bottleneck, batch norms (``response`` set).
        """
        found: dict[str, list[str]] = {g: [] for g in self.config.widths}
        for node in self.nodes:
            if isinstance(node, Activation | BatchNorm) and node.response is not None:
                found[node.response].append(node.name)
        return found

    def producers(self) -> dict[str, list[str]]:
        """For every group, the convs (and hidden linears) whose outputs are that group."""
        found: dict[str, list[str]] = {g: [] for g in self.config.widths}
        for node in self.nodes:
            group = node.out_group if isinstance(node, Conv | Linear) else None
            if group is not None:
                found[group].append(node.name)
        return found

    def norms(self) -> dict[str, list[str]]:
        """For every group, the batch norms over that group's channels."""
        found: dict[str, list[str]] = {g: [] for g in self.config.widths}
        for node in self.nodes:
            if isinstance(node, BatchNorm):
                found[node.group].append(node.name)
        return found

    def _tensors(self, node: Node) -> Iterator[tuple[str, TensorSpec]]:
        """The tensors a node's module holds, in the module's own order."""
        if isinstance(node, Conv):
            out, per = self.width(node.out_group), self.width(node.in_group)
            in_axis = None if node.depthwise else node.in_group
            k = node.kernel
            yield "weight", TensorSpec(
                (out, 1 if node.depthwise else per, k, k), (node.out_group, in_axis, None, None)
            )
            if node.bias:
                yield "bias", TensorSpec((out,), (node.out_group,))
        elif isinstance(node, BatchNorm):
            c, g = self.width(node.group), (node.group,)
            yield "weight", TensorSpec((c,), g)
            yield "bias", TensorSpec((c,), g)
            yield "running_mean", TensorSpec((c,), g, parameter=False)
            yield "running_var", TensorSpec((c,), g, parameter=False)
            yield "num_batches_tracked", TensorSpec((), (), "int64", parameter=False)
        elif isinstance(node, Linear):
            out = self.config.num_classes if node.out_group is None else self.width(node.out_group)
            yield "weight", TensorSpec((out, self.width(node.in_group)),
                                       (node.out_group, node.in_group))
            if node.bias:
                yield "bias", TensorSpec((out,), (node.out_group,))

    def _infer(self, node: Node, inputs: list[Shape]) -> Shape:
        """The output shape of ``node`` given its inputs' shapes (torch's rules)."""
        x = inputs[0]
        if isinstance(node, Conv):
            h, w = (_conv_out(s, node.kernel, node.stride, node.padding)
                    for s in (x.height, x.width))
            return Shape(self.width(node.out_group), h, w)
        if isinstance(node, MaxPool):
            h, w = (_pool_out(s, node) for s in (x.height, x.width))
            return Shape(x.channels, h, w)
        if isinstance(node, GlobalAvgPool):
            return Shape(x.channels)
        if isinstance(node, Linear):
            return Shape(self.config.num_classes if node.out_group is None
                         else self.width(node.out_group))
        return x  # BatchNorm, Activation, Add, Dropout keep the shape


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _pool_out(size: int, pool: MaxPool) -> int:
    """torch's max-pool output size, including its ceil-mode rule."""
    span = size + 2 * pool.padding - pool.kernel
    out = (-(-span // pool.stride) if pool.ceil_mode else span // pool.stride) + 1
    if pool.ceil_mode and (out - 1) * pool.stride >= size + pool.padding:
        out -= 1
    return out


def _tree_order(modules: Mapping[str, object]) -> list[str]:
    """Module paths in the order torch visits them: depth first, children in creation order.

    A module created later under an earlier parent (``layer1.1`` after ``layer1.0``'s
    children) is visited with that parent, exactly as ``nn.Module.state_dict`` does.
    """
    tree: dict[str, dict] = {}
    for path in modules:
        level = tree
        for part in path.split("."):
            level = level.setdefault(part, {})
    order: list[str] = []

    def visit(level: dict[str, dict], prefix: str) -> None:
        for part, children in level.items():
            path = f"{prefix}{part}"
            if path in modules:
                order.append(path)
            visit(children, f"{path}.")

    visit(tree, "")
    return order


class GraphBuilder:
    """Appends nodes and names their values, so that a family reads like its forward pass."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._nodes: list[Node] = []

    def _add(self, cls: type[Node], inputs: tuple[str, ...], **fields: object) -> str:
        output = f"v{len(self._nodes)}"
        self._nodes.append(cls(inputs=inputs, output=output, **fields))
        return output

    def conv(self, name: str, x: str, in_group: str | None, out_group: str, kernel: int,
             stride: int = 1, *, depthwise: bool = False, bias: bool = False,
             padding: int | None = None) -> str:
        """A conv; padding defaults to ``kernel // 2`` (same size at stride 1)."""
        return self._add(Conv, (x,), name=name, in_group=in_group, out_group=out_group,
                         kernel=kernel, stride=stride,
                         padding=kernel // 2 if padding is None else padding,
                         depthwise=depthwise, bias=bias)

    def batch_norm(self, name: str, x: str, group: str, response: str | None = None) -> str:
        return self._add(BatchNorm, (x,), name=name, group=group, response=response)

    def relu(self, name: str, x: str, response: str | None = None) -> str:
        return self._add(Activation, (x,), name=name, kind="relu", response=response)

    def relu6(self, name: str, x: str, response: str | None = None) -> str:
        return self._add(Activation, (x,), name=name, kind="relu6", response=response)

    def max_pool(self, x: str, kernel: int, stride: int, padding: int = 0,
                 ceil_mode: bool = False) -> str:
        return self._add(MaxPool, (x,), kernel=kernel, stride=stride, padding=padding,
                         ceil_mode=ceil_mode)

    def add(self, a: str, b: str) -> str:
        return self._add(Add, (a, b))

    def global_avg_pool(self, x: str) -> str:
        return self._add(GlobalAvgPool, (x,))

    def dropout(self, x: str, p: float) -> str:
        return self._add(Dropout, (x,), p=p)

    def linear(self, name: str, x: str, in_group: str, out_group: str | None = None,
               bias: bool = True) -> str:
        return self._add(Linear, (x,), name=name, in_group=in_group, out_group=out_group,
                         bias=bias)

    def build(self, output: str) -> Graph:
        return Graph(self.config, tuple(self._nodes), output)
