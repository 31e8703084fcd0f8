"""Channel importance criteria: Triplet Response Residual (TRR) and the L1-norm baseline.

A criterion scores every channel of every channel group of a model; pruning removes the
lowest-scoring channels. Both criteria share one interface so that they can be compared on
the same pruning schedule (``benchmarks/pruning_criteria.py``).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from nestdnn import distributed
from nestdnn.data import ImageData, images_at, labels_of
from nestdnn.errors import NestError
from nestdnn.models import NestNet

log = logging.getLogger(__name__)

Scores = dict[str, Tensor]
"""Group name -> one importance score per channel of the group (float64, shape (width,))."""


class Criterion(ABC):
    """Scores the channels of every group of a model; a higher score means more important."""

    name: ClassVar[str]

    @abstractmethod
    def scores(self, model: NestNet, data: ImageData) -> Scores:
        """One score per channel of each of ``model.groups()``, computed on ``data`` if needed.

        Under torchrun every rank must call it, and every rank gets the same scores.
        """


@dataclass(frozen=True)
class Triplets:
    """Indices into a data set: anchor and positive share a class, negative has another."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor

    def __len__(self) -> int:
        return len(self.anchor)


def sample_triplets(labels: Tensor, count: int, seed: int) -> Triplets:
    """Draw ``count`` triplets with balanced classes, reproducibly from ``seed``.

    Anchor classes cycle through every class that has at least two samples; for each anchor
    class the negative classes cycle through all other classes, so that every (anchor,
    negative) class pair is equally frequent. Samples are drawn uniformly within a class and
    the positive is never the anchor itself.
    """
    if count < 1:
        raise NestError(f"the number of triplets must be at least 1, got {count}")
    classes, sizes = torch.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise NestError("TRR needs samples of at least two classes in the training split")
    anchor_classes = classes[sizes >= 2]
    if len(anchor_classes) == 0:
        raise NestError("TRR needs a class with at least two training samples")
    members = {int(c): torch.nonzero(labels == c).flatten() for c in classes}
    gen = torch.Generator().manual_seed(seed)
    anchors, positives, negatives = [], [], []
    for t in range(count):
        a_class = int(anchor_classes[t % len(anchor_classes)])
        others = classes[classes != a_class]
        n_class = int(others[(t // len(anchor_classes)) % len(others)])
        same = members[a_class]
        pair = torch.randperm(len(same), generator=gen)[:2]
        anchors.append(same[pair[0]])
        positives.append(same[pair[1]])
        pool = members[n_class]
        negatives.append(pool[torch.randint(len(pool), (1,), generator=gen)[0]])
    return Triplets(torch.stack(anchors), torch.stack(positives), torch.stack(negatives))


@dataclass
class TRR(Criterion):
    """Triplet Response Residual: sum over triplets of ||F_c(a)-F_c(n)||^2 - ||F_c(a)-F_c(p)||^2.

    F_c(x) is channel c's post-BN, post-ReLU response in every layer of its group, flattened
    and concatenated. The model runs in eval mode (BN on running statistics), so a sample's
    response does not depend on the rest of its batch. Under torchrun the ranks share the
    triplet batches and the sums are all-reduced.
    """

    triplets: int = 256
    seed: int = 0
    batch_size: int = 64  # triplets per forward pass (3x as many images)
    name: ClassVar[str] = "trr"

    def scores(self, model: NestNet, data: ImageData) -> Scores:
        triplets = sample_triplets(labels_of(data), self.triplets, self.seed)
        totals = {g: torch.zeros(w, dtype=torch.float64) for g, w in model.groups().items()}
        device = next(model.parameters()).device
        starts = range(0, len(triplets), self.batch_size)
        with _eval_mode(model), torch.inference_mode(), _residual_hooks(model, totals):
            for start in [starts[i] for i in distributed.shard(len(starts)).tolist()]:
                batch = slice(start, start + self.batch_size)
                idx = torch.cat(
                    [triplets.anchor[batch], triplets.positive[batch], triplets.negative[batch]]
                )
                model(images_at(data, idx).to(device))
        log.debug("TRR over %d triplets for %d groups", len(triplets), len(totals))
        return _summed_over_ranks(totals)


@dataclass
class L1(Criterion):
    """Sum of |W| over each channel's filters in every conv producing the channel's group."""

    name: ClassVar[str] = "l1"

    def scores(self, model: NestNet, data: ImageData) -> Scores:
        modules = dict(model.named_modules())
        return {
            group: sum(
                (_filter_l1(modules[name]) for name in names),
                torch.zeros(model.groups()[group], dtype=torch.float64),
            )
            for group, names in model.producers().items()
        }


def _summed_over_ranks(totals: Scores) -> Scores:
    """Every group's scores summed over the ranks (one all-reduce for all groups)."""
    if not distributed.current().distributed:
        return totals
    flat = distributed.all_reduce_sum(torch.cat(list(totals.values())))
    return dict(zip(totals, flat.split([len(t) for t in totals.values()]), strict=True))


def _filter_l1(conv: nn.Module) -> Tensor:
    weight = conv.weight.detach()
    return weight.abs().flatten(1).sum(1).double().cpu()


CRITERIA: dict[str, Callable[[int, int], Criterion]] = {
    "trr": lambda triplets, seed: TRR(triplets=triplets, seed=seed),
    "l1": lambda _triplets, _seed: L1(),
}
"""Criterion name -> factory taking (triplets, seed); L1 uses neither."""


def make_criterion(name: str, *, triplets: int = 256, seed: int = 0) -> Criterion:
    """Build a criterion by name (``trr`` or ``l1``)."""
    if name not in CRITERIA:
        raise NestError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}")
    return CRITERIA[name](triplets, seed)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _residual_hooks(model: NestNet, totals: Scores) -> Iterator[None]:
    """Add each response module's per-channel triplet residuals to ``totals`` of its group.

    A forward pass gets anchors, positives and negatives stacked in three equal thirds.
    """

    def hook_for(group: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(_module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
            anchor, positive, negative = output.chunk(3)
            far = _channel_sq_dist(anchor, negative)
            near = _channel_sq_dist(anchor, positive)
            totals[group] += (far - near).double().cpu()

        return hook

    handles = [
        module.register_forward_hook(hook_for(group))
        for group, modules in model.response_modules().items()
        for module in modules
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _channel_sq_dist(x: Tensor, y: Tensor) -> Tensor:
    """Squared distance between paired samples per channel, summed over pairs: shape (C,)."""
    diff = (x - y).reshape(x.shape[0], x.shape[1], -1)
    return diff.square().sum(dim=(0, 2))
