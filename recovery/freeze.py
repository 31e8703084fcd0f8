"""The freeze of freeze-&-grow: keeping the previous descendant's block of every nested weight.

For every nested tensor (a conv / linear weight, >= 2 dims) the block indexed by the previous
descendant's widths along the grouped dims (ungrouped dims in full) belongs to that
descendant and must stay bit-identical. ``mask_grads`` zeroes the block's gradient between
the backward pass and the optimizer step (so that momentum and adaptive optimizer state carry
no signal for it): under DistributedDataParallel that is after the gradients are all-reduced,
so nothing a rank sends can reach the block. ``restore`` copies the saved values back after
every optimizer step, which also undoes weight decay and any update from optimizer state, so
the block is bit-exact whatever the optimizer, precision or number of processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nestdnn.models import GroupAxes, NestNet

Block = tuple[slice, ...]


def is_nested(tensor: Tensor) -> bool:
    """Nested tensors (shared between descendants, stored by level) are those with >= 2 dims."""
    return tensor.dim() >= 2


def block_index(axes: GroupAxes, widths: Mapping[str, int]) -> Block:
    """The prefix block of a tensor: ``[:widths[g]]`` along grouped dims, all of ungrouped."""
    return tuple(slice(None) if g is None else slice(0, widths[g]) for g in axes)


@dataclass
class FrozenBlock:
    """One parameter's frozen block and the values it must keep."""

    name: str
    param: nn.Parameter
    index: Block
    values: Tensor


@torch.no_grad()
def overwrite_blocks(
    model: NestNet, state: Mapping[str, Tensor], widths: Mapping[str, int]
) -> None:
    """Write a smaller descendant's nested weights (``state``, ``widths``) into their blocks."""
    axes = model.param_axes()
    for name, param in model.named_parameters():
        if is_nested(param):
            block = param[block_index(axes[name], widths)]
            if block.shape != state[name].shape:
                raise ValueError(
                    f"{name}: {tuple(state[name].shape)} does not fit the block"
                    f" {tuple(block.shape)}"
                )
            block.copy_(state[name])


class Freezer:
    """Pins the prefix blocks (``frozen_widths``) of ``model``'s nested weights to their values."""

    def __init__(self, model: NestNet, frozen_widths: Mapping[str, int]) -> None:
        """Remember every nested weight's block as it is now (on the weight's device)."""
        axes = model.param_axes()
        self.blocks: list[FrozenBlock] = []
        for name, param in model.named_parameters():
            if is_nested(param):
                index = block_index(axes[name], frozen_widths)
                self.blocks.append(FrozenBlock(name, param, index, param[index].detach().clone()))

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the frozen blocks' gradients (call after backward, before the optimizer step)."""
        for block in self.blocks:
            if block.param.grad is not None:
                block.param.grad[block.index] = 0

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the frozen values back into their blocks (call after every optimizer step)."""
        for block in self.blocks:
            block.param[block.index] = block.values
