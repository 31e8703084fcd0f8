"""Torch models of every registered family, built from the family's layer graph.

`NestNet` interprets a `nestdnn.arch.Graph`: it holds one torch module per graph module node
at the node's path (``features.0``, ``layer1.0.conv1``: torchvision's names, so state_dicts
load across), runs the nodes in order, and answers everything pruning and recovery ask of
a model (channel groups, which group indexes each tensor dimension, the convs and norms of
each group, the modules whose outputs are a group's responses) from the graph, so that no
family-specific code exists outside its `nestdnn.arch` module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestdnn.arch import (
    ARCHS,
    INPUT,
    Graph,
    GroupAxes,
    ModelConfig,
    default_widths,
    full_widths,
    model_graph,
)
from nestdnn.arch.graph import (
    Activation,
    Add,
    BatchNorm,
    Conv,
    Dropout,
    GlobalAvgPool,
    Linear,
    MaxPool,
    Node,
)
from nestdnn.errors import NestError

__all__ = [
    "ARCHS",
    "GroupAxes",
    "ModelConfig",
    "NestNet",
    "build_from_config",
    "build_model",
    "default_widths",
    "full_widths",
    "prefix_state_dict",
    "slice_state_dict",
    "validate_indices",
]


class ModuleTree(nn.Module):
    """A container of named children with no forward; ``tree[0]`` is its child named "0"."""

    def __getitem__(self, key: int | str) -> nn.Module:
        return self._modules[str(key)]  # type: ignore[return-value]


Run = Callable[["NestNet", "_Step", list[Tensor]], Tensor]


@dataclass(frozen=True)
class _Step:
    """One node as the forward pass runs it, and the values no later step reads."""

    node: Node
    run: Run
    path: tuple[str, ...]  # the node's module path, split (empty for functional nodes)
    release: tuple[str, ...]


class NestNet(ModuleTree):
    """A model of any registered family, at the widths of its config."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.config = graph.config
        self.graph = graph
        for node in graph.modules():
            self._place(node.name, _torch_module(graph, node))
        self._steps = _plan(graph)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        values = {INPUT: x}
        for step in self._steps:
            values[step.node.output] = step.run(self, step, [values[v] for v in step.node.inputs])
            for name in step.release:
                del values[name]
        return values[self.graph.output]

    def module_at(self, path: tuple[str, ...]) -> nn.Module:
        """The submodule at a split module path (faster than ``get_submodule``)."""
        module: nn.Module = self
        for part in path:
            module = module._modules[part]  # type: ignore[assignment]
        return module

    def groups(self) -> dict[str, int]:
        """Channel groups in declaration order with their widths."""
        return dict(self.config.widths)

    def param_axes(self) -> dict[str, GroupAxes]:
        """For every state_dict entry, the group indexing each dimension (None: not grouped)."""
        return {key: spec.axes for key, spec in self.graph.state().items()}

    def producers(self) -> dict[str, list[str]]:
        """For every group, the convs (and hidden linears) whose outputs are that group."""
        return self.graph.producers()

    def norms(self) -> dict[str, list[str]]:
        """For every group, the names of the batch norms over that group's channels."""
        return self.graph.norms()

    def response_modules(self) -> dict[str, list[nn.Module]]:
        """For every group, the modules whose outputs are the group's post-BN post-ReLU maps
        (post-BN in a linear bottleneck, which has no activation)."""
        return {group: [self.get_submodule(name) for name in names]
                for group, names in self.graph.responses().items()}

    def count_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def count_macs(self) -> int:
        """Multiply-accumulates of one forward pass on a single input (convs and linears)."""
        return self.graph.macs()

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

    def _place(self, path: str, module: nn.Module) -> None:
        """Register ``module`` at a dotted path, creating the containers on the way."""
        *parents, leaf = path.split(".")
        parent: nn.Module = self
        for part in parents:
            if part not in parent._modules:
                parent.add_module(part, ModuleTree())
            parent = parent._modules[part]  # type: ignore[assignment]
        parent.add_module(leaf, module)


def _torch_module(graph: Graph, node: Node) -> nn.Module:
    """The torch module of a module node, at the graph's widths."""
    if isinstance(node, Conv):
        out = graph.width(node.out_group)
        return nn.Conv2d(graph.width(node.in_group), out, node.kernel, node.stride, node.padding,
                         groups=out if node.depthwise else 1, bias=node.bias)
    if isinstance(node, BatchNorm):
        return nn.BatchNorm2d(graph.width(node.group), eps=node.eps)
    if isinstance(node, Activation):
        return nn.ReLU6() if node.kind == "relu6" else nn.ReLU()
    assert isinstance(node, Linear)
    out = graph.config.num_classes if node.out_group is None else graph.width(node.out_group)
    return nn.Linear(graph.width(node.in_group), out, bias=node.bias)


def _call_module(net: NestNet, step: _Step, inputs: list[Tensor]) -> Tensor:
    return net.module_at(step.path)(inputs[0])


def _max_pool(_net: NestNet, step: _Step, inputs: list[Tensor]) -> Tensor:
    node = step.node
    assert isinstance(node, MaxPool)
    return F.max_pool2d(inputs[0], node.kernel, node.stride, node.padding,
                        ceil_mode=node.ceil_mode)


def _add(_net: NestNet, _step: _Step, inputs: list[Tensor]) -> Tensor:
    return inputs[0] + inputs[1]


def _global_avg_pool(_net: NestNet, _step: _Step, inputs: list[Tensor]) -> Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(inputs[0], 1), 1)


def _dropout(net: NestNet, step: _Step, inputs: list[Tensor]) -> Tensor:
    assert isinstance(step.node, Dropout)
    return F.dropout(inputs[0], step.node.p, net.training)


_FUNCTIONAL: dict[type[Node], Run] = {
    MaxPool: _max_pool,
    Add: _add,
    GlobalAvgPool: _global_avg_pool,
    Dropout: _dropout,
}


def _split(node: Node) -> tuple[str, ...]:
    name = getattr(node, "name", None)
    return tuple(name.split(".")) if name else ()


def _plan(graph: Graph) -> tuple[_Step, ...]:
    """The forward pass: each node's runner, and which values die after it."""
    last_use = {v: i for i, node in enumerate(graph.nodes) for v in node.inputs}
    return tuple(
        _Step(
            node=node,
            run=_FUNCTIONAL.get(type(node), _call_module),
            path=_split(node),
            release=tuple(v for v in dict.fromkeys(node.inputs)
                          if last_use[v] == i and v != graph.output),
        )
        for i, node in enumerate(graph.nodes)
    )


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------- slicing


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


# --------------------------------------------------------------------------------- builders


def build_from_config(config: ModelConfig | Mapping[str, Any]) -> NestNet:
    """Rebuild a model (random weights) from its config, validating the widths."""
    return NestNet(model_graph(config))


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

