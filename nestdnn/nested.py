"""Torch modules of a `.nest` file's descendants, and the handle that switches between them.

`NestedModel` keeps one resident descendant of an open `NestFile` as a plain dense `NestNet`
(no masks, no zero channels) and upgrades or downgrades it in place: an upgrade reads only
the blocks of the levels it adds, a downgrade slices and frees. Measured on a VGG-16 x0.25
file with 5 descendants (2 loaded cores): reopening costs ~50 ms of validation per switch,
against ~10 ms for a whole upgrade on the open file. A switch builds a new dense module from
owned, contiguous tensors and publishes it with one attribute assignment; the old module is
never modified, so requests running on it finish unharmed, and it is freed when they let go.
A downgrade takes 1.5-2 ms (cold-loading the target from its own safetensors file: 20-50 ms):
one copy of each nested tensor's prefix (a view would keep the larger storage alive), one
copy per packed tensor, and a module tree made from a per-level template (`_Template`) built
when the handle opens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nestdnn.errors import NestError
from nestdnn.models import NestNet, build_from_config
from nestdnn.nestfile import Manifest, NestFile

log = logging.getLogger(__name__)


def load_descendant(path: str | Path, k: int) -> NestNet:
    """Dense eval-mode model of descendant ``k``, reading only blocks of levels <= k and @k."""
    with NestFile(path) as nest:
        level = nest.check_level(k)
        return Templates(nest).module(level, torch_state(nest, level))


def torch_state(nest: NestFile, level: int, base: Mapping[str, Tensor] | None = None,
                base_level: int = -1) -> dict[str, Tensor]:
    """`NestFile.state` as tensors sharing the arrays' memory (one storage per packed dtype)."""
    arrays = nest.nested_state(level, None if base is None else
                               {key: base[key].numpy() for key in nest.layout.nested}, base_level)
    state = {key: torch.from_numpy(array) for key, array in arrays.items()}
    state.update(torch_own_tensors(nest, level))
    return state


def torch_own_tensors(nest: NestFile, level: int) -> dict[str, Tensor]:
    """Descendant ``level``'s per-descendant tensors: views of one tensor per dtype."""
    tensors: dict[str, Tensor] = {}
    for packed in nest.layout.packed[level]:
        tensors.update(packed.unpack(torch.from_numpy(nest.packed_copy(packed))))
    return tensors


class Templates:
    """Each descendant's module template of one file, built once, on demand."""

    def __init__(self, nest: NestFile) -> None:
        self._nest = nest
        self._templates: dict[int, _Template] = {}
        self._lock = threading.Lock()

    def module(self, level: int, state: Mapping[str, Tensor]) -> NestNet:
        """A dense eval-mode model of descendant ``level`` whose tensors are ``state``'s."""
        module: NestNet = self._template(level).fill(state)
        return module

    def build_all(self) -> None:
        """Build every descendant's template now, so that no later switch pays for it."""
        for level in range(self._nest.manifest.num_descendants):
            self._template(level)

    def _template(self, level: int) -> _Template:
        with self._lock:
            template = self._templates.get(level)
            if template is None:
                skeleton = build_from_config(self._nest.manifest.config(level)).to("meta").eval()
                template = self._templates[level] = _Template(skeleton)
            return template


@dataclass(frozen=True)
class _Resident:
    """The current descendant: its level, its module and the tensors the module uses."""

    level: int
    module: NestNet
    state: Mapping[str, Tensor]


class NestedModel:
    """A resident descendant of a `.nest` file that upgrades and downgrades in place.

    ``module`` is always a plain dense model of the current descendant. Switches are
    serialised by a lock; readers never need it: they take ``module`` (or ``level``) and
    keep using that object, which a switch never modifies. Upgrades read only the levels
    they add, downgrades only ``@k``. The file (a `NestFile`, possibly shared with other
    handles) must stay open for switching; ``close`` closes it only if the handle opened it.
    """

    def __init__(self, nest: NestFile, level: int, templates: Templates | None = None,
                 *, owns_file: bool = False) -> None:
        self._nest = nest
        self._templates = templates or Templates(nest)
        self._owns_file = owns_file
        self._closed = False
        self._lock = threading.Lock()
        level = nest.check_level(level)
        self._templates.build_all()
        self._resident = self._build(level, torch_state(nest, level))

    @classmethod
    def open(cls, path: str | Path, k: int) -> NestedModel:
        """Open ``path`` (validating it) and load descendant ``k``."""
        nest = NestFile(path)
        try:
            return cls(nest, k, owns_file=True)
        except BaseException:
            nest.close()
            raise

    @property
    def level(self) -> int:
        return self._resident.level

    @property
    def module(self) -> NestNet:
        return self._resident.module

    @property
    def manifest(self) -> Manifest:
        return self._nest.manifest

    @property
    def path(self) -> Path:
        return self._nest.path

    @property
    def resident_bytes(self) -> int:
        """Bytes of tensor storage the current module holds (each storage counted once)."""
        return storage_bytes(self._resident.module)

    def switch_peak_bytes(self, k: int) -> int:
        """Bytes held while switching to ``k``: the current and the target descendant."""
        infos = self.manifest.descendants
        return infos[self.level].bytes + infos[self._nest.check_level(k)].bytes

    def upgrade(self, k: int) -> None:
        """Grow to the larger descendant ``k``, reading only the blocks of levels above ours."""
        with self._lock:
            if self._target(k) <= self.level:
                raise NestError(f"cannot upgrade from descendant {self.level} to {k}")
            self._grow(k)

    def downgrade(self, k: int) -> None:
        """Shrink to the smaller descendant ``k``: slice the nested tensors, free the rest."""
        with self._lock:
            if self._target(k) >= self.level:
                raise NestError(f"cannot downgrade from descendant {self.level} to {k}")
            self._shrink(k)

    def switch(self, k: int) -> None:
        """Upgrade or downgrade to descendant ``k`` (nothing to do if already there)."""
        with self._lock:
            if self._target(k) > self.level:
                self._grow(k)
            elif k < self.level:
                self._shrink(k)

    def close(self) -> None:
        """Release the file if this handle opened it; the current module stays usable."""
        with self._lock:
            self._closed = True
            if self._owns_file:
                self._nest.close()

    def __enter__(self) -> NestedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _target(self, k: int) -> int:
        if self._nest.closed or self._closed:
            raise NestError(f"{self.path} is closed; reopen it to switch descendants")
        return self._nest.check_level(k)

    def _grow(self, k: int) -> None:
        current = self._resident
        self._resident = self._build(k, torch_state(self._nest, k, current.state, current.level))

    def _shrink(self, k: int) -> None:
        """Contiguous copies of the prefixes (views would keep the larger storage alive)."""
        shapes, current = self._nest.layout.shapes[k], self._resident.state
        state = {
            key: current[key][: shapes[key][0], : shapes[key][1]].clone(
                memory_format=torch.contiguous_format
            )
            for key in self._nest.layout.nested
        }
        state.update(torch_own_tensors(self._nest, k))
        self._resident = self._build(k, state)

    def _build(self, level: int, state: dict[str, Tensor]) -> _Resident:
        """The new descendant, complete before the caller publishes it in one assignment."""
        resident = _Resident(level, self._templates.module(level, state), state)
        log.debug("%s: descendant %d resident", self._nest.path, level)
        return resident


def storage_bytes(module: nn.Module) -> int:
    """Bytes of the distinct storages behind a module's parameters and buffers."""
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in module.state_dict().values()
    }
    return sum(storages.values())


# ------------------------------------------------------------------------------ templates


_TREE_ATTRS = frozenset({"_parameters", "_buffers", "_modules"})


@dataclass(frozen=True)
class _Node:
    """One module of a template: its class, attributes and where its tensors come from."""

    cls: type[nn.Module]
    attrs: dict[str, Any]  # shared, immutable-in-practice values (sizes, flags, config)
    containers: tuple[tuple[str, dict[Any, Any] | set[Any]], ...]  # copied per instance
    params: tuple[tuple[str, str | None, bool], ...]  # name, state key (None: unset), grad
    buffers: tuple[tuple[str, str | None], ...]
    children: tuple[tuple[str, int | None], ...]  # name, index of the child's node


class _Template:
    """A meta-device module tree flattened once, so that each copy costs little to make.

    ``fill`` makes a new module tree of the skeleton's classes and attributes whose
    parameters and buffers are a state's tensors: no initialisation, no meta dispatch, no
    recursion. Containers (hook dicts, name sets) are copied, so a copy never shares mutable
    state with the skeleton or with another copy.
    """

    def __init__(self, skeleton: nn.Module) -> None:
        self._nodes: list[_Node] = []
        self._add(skeleton, "")

    def _add(self, module: nn.Module, prefix: str) -> int:
        """Add ``module``'s subtree, children first; return the index of its node."""
        children = tuple(
            (name, None if child is None else self._add(child, f"{prefix}{name}."))
            for name, child in module._modules.items()
        )
        attrs = {k: v for k, v in vars(module).items() if k not in _TREE_ATTRS}
        self._nodes.append(
            _Node(
                cls=type(module),
                attrs={k: v for k, v in attrs.items() if not isinstance(v, dict | set)},
                containers=tuple((k, v) for k, v in attrs.items() if isinstance(v, dict | set)),
                params=tuple(
                    (name, None if p is None else prefix + name, p is None or p.requires_grad)
                    for name, p in module._parameters.items()
                ),
                buffers=tuple(
                    (name, None if b is None else prefix + name)
                    for name, b in module._buffers.items()
                ),
                children=children,
            )
        )
        return len(self._nodes) - 1

    def fill(self, state: Mapping[str, Tensor]) -> Any:
        """A new module tree whose parameters and buffers are ``state``'s tensors."""
        modules: list[nn.Module] = []
        for node in self._nodes:
            module = object.__new__(node.cls)
            attrs = vars(module)
            attrs.update(node.attrs)
            for name, container in node.containers:
                attrs[name] = container.copy()
            # most modules hold no tensors or no children: skip the comprehensions for those
            attrs["_parameters"] = (
                {
                    name: None if key is None else nn.Parameter(state[key], grad)
                    for name, key, grad in node.params
                }
                if node.params
                else {}
            )
            attrs["_buffers"] = (
                {name: None if key is None else state[key] for name, key in node.buffers}
                if node.buffers
                else {}
            )
            attrs["_modules"] = (
                {name: None if i is None else modules[i] for name, i in node.children}
                if node.children
                else {}
            )
            modules.append(module)
        return modules[-1]
