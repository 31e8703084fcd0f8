"""A descendant as compiled backends run it: every batch norm folded into its convolution.

In eval mode ``bn(conv(x)) = s * (W x + b - mean) + beta`` with ``s = gamma / sqrt(var +
eps)``, so a conv followed by a batch norm is one conv with weight ``s * W`` and bias ``s *
(b - mean) + beta``. `fold_plan` finds these pairs in a family's `Graph` (a batch norm whose
input is a conv's output that nothing else reads); `folded_weights` computes the folded
tensors from a descendant's state (numpy, float64 for the per-channel factors). The
inference graph's tensors are named after the modules: ``{conv}.weight`` / ``{conv}.bias``
for a folded conv, ``{linear}.weight`` / ``{linear}.bias``, and for a batch norm that
follows no conv (none of the families has one) its four tensors under its own name.

No torch: the daemon derives its backends' weights from the `.nest` with numpy alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from nestdnn.arch.graph import BatchNorm, Conv, Graph, Linear, Node

BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class FoldedConv:
    """A conv and the batch norm folded into it (None: the conv alone); writes ``output``."""

    conv: Conv
    norm: BatchNorm | None
    output: str

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.conv.inputs


Step = FoldedConv | Node


def fold_plan(graph: Graph) -> list[Step]:
    """The graph's nodes in order, each conv merged with the batch norm that follows it."""
    readers = Counter(v for node in graph.nodes for v in node.inputs)
    convs = {node.output: node for node in graph.nodes if isinstance(node, Conv)}
    folded = {node.inputs[0]: node for node in graph.nodes
              if isinstance(node, BatchNorm) and node.inputs[0] in convs
              and readers[node.inputs[0]] == 1}
    plan: list[Step] = []
    for node in graph.nodes:
        if isinstance(node, Conv):
            norm = folded.get(node.output)
            plan.append(FoldedConv(node, norm, node.output if norm is None else norm.output))
        elif not (isinstance(node, BatchNorm) and node.inputs[0] in folded):
            plan.append(node)
    return plan


def folded_weights(plan: list[Step], state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor the inference graph reads, from a descendant's (unfolded) state."""
    tensors: dict[str, np.ndarray] = {}
    for step in plan:
        if isinstance(step, FoldedConv):
            conv = step.conv
            weight = state[f"{conv.name}.weight"]
            bias = state[f"{conv.name}.bias"] if conv.bias else None
            if step.norm is not None:
                weight, bias = fold_batchnorm(weight, bias, *(
                    state[f"{step.norm.name}.{t}"] for t in BN_TENSORS), eps=step.norm.eps)
            elif bias is None:
                bias = np.zeros(weight.shape[0], np.float32)
            tensors[f"{conv.name}.weight"] = np.ascontiguousarray(weight, np.float32)
            tensors[f"{conv.name}.bias"] = np.ascontiguousarray(bias, np.float32)
        elif isinstance(step, Linear):
            tensors[f"{step.name}.weight"] = np.ascontiguousarray(state[f"{step.name}.weight"])
            tensors[f"{step.name}.bias"] = (
                np.ascontiguousarray(state[f"{step.name}.bias"]) if step.bias
                else np.zeros(tensors[f"{step.name}.weight"].shape[0], np.float32))
        elif isinstance(step, BatchNorm):
            for t in BN_TENSORS:
                tensors[f"{step.name}.{t}"] = np.ascontiguousarray(state[f"{step.name}.{t}"])
    return tensors


def fold_batchnorm(weight: np.ndarray, bias: np.ndarray | None, gamma: np.ndarray,
                   beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                   eps: float) -> tuple[np.ndarray, np.ndarray]:
    """A conv's weight and bias with the eval-mode batch norm after it folded in (float32)."""
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    shift = np.zeros_like(scale) if bias is None else bias.astype(np.float64)
    folded_bias = (shift - mean.astype(np.float64)) * scale + beta.astype(np.float64)
    folded_weight = weight * scale.astype(np.float32)[:, None, None, None]
    return folded_weight.astype(np.float32, copy=False), folded_bias.astype(np.float32)
