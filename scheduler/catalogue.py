"""The models a daemon can serve: ``NAME.nest`` + ``NAME.profile.json`` pairs in one directory.

Each pair is validated when loaded: the profile must parse, must belong to that very file
(its recorded sha256 equals the file's content hash) and must describe as many descendants as
the file holds. A pair that fails any check is reported (logged and listed in ``rejected``
with the reason) and skipped; one bad file never keeps the others from being served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from nestdnn.errors import NestError
from nestdnn.nestfile import read_manifest
from profiles.nestinfo import file_sha256, input_shape
from profiles.schema import Backend, Profile, descendant_table, load_profile
from scheduler.problem import Descendant

log = logging.getLogger(__name__)

NEST_SUFFIX = ".nest"
PROFILE_SUFFIX = ".profile.json"


@dataclass(frozen=True)
class CatalogueEntry:
    """A servable model: its file, its validated profile and what its frames must look like."""

    name: str
    nest_path: Path
    profile: Profile
    input_shape: tuple[int, int, int]
    class_names: list[str]
    mean: list[float]
    std: list[float]

    @property
    def num_descendants(self) -> int:
        return self.profile.num_descendants

    @property
    def sha256(self) -> str:
        return self.profile.model.sha256

    def descendants(self, backend: Backend) -> list[Descendant]:
        """A(d), M(d) (resident weight bytes) and L(d) (median latency on ``backend``)."""
        return [Descendant(accuracy=c.accuracy, memory_bytes=c.memory_bytes,
                           latency_s=c.latency_s)
                for c in descendant_table(self.profile, backend)]


@dataclass(frozen=True)
class RejectedModel:
    """A file of the models directory that is not served, and why."""

    name: str
    reason: str


@dataclass
class ModelCatalogue:
    """Validated models by name, and the files that were rejected."""

    entries: dict[str, CatalogueEntry] = field(default_factory=dict)
    rejected: list[RejectedModel] = field(default_factory=list)

    @classmethod
    def load(cls, models_dir: str | Path) -> ModelCatalogue:
        """Validate every pair in ``models_dir``; bad pairs are logged and skipped."""
        models_dir = Path(models_dir)
        if not models_dir.is_dir():
            raise NestError(f"models directory {models_dir} does not exist")
        catalogue = cls()
        nests = sorted(models_dir.glob(f"*{NEST_SUFFIX}"))
        for nest_path in nests:
            name = nest_path.name.removesuffix(NEST_SUFFIX)
            try:
                catalogue.entries[name] = load_entry(name, nest_path)
            except NestError as exc:
                catalogue.reject(name, str(exc))
        paired = {p.name.removesuffix(NEST_SUFFIX) for p in nests}
        for profile_path in sorted(models_dir.glob(f"*{PROFILE_SUFFIX}")):
            name = profile_path.name.removesuffix(PROFILE_SUFFIX)
            if name not in paired:
                catalogue.reject(name, f"{profile_path.name} has no {name}{NEST_SUFFIX} beside it")
        log.info("catalogue %s: %d models, %d rejected", models_dir, len(catalogue.entries),
                 len(catalogue.rejected))
        return catalogue

    def reject(self, name: str, reason: str) -> None:
        """Record a pair that will not be served."""
        log.warning("model %s skipped: %s", name, reason)
        self.rejected.append(RejectedModel(name, reason))


def load_entry(name: str, nest_path: Path) -> CatalogueEntry:
    """Validate one pair: the profile parses, hashes to the file and matches its descendants."""
    profile_path = nest_path.with_name(name + PROFILE_SUFFIX)
    if not profile_path.is_file():
        raise NestError(f"no profile {profile_path.name} beside {nest_path.name}")
    profile = load_profile(profile_path)
    digest = file_sha256(nest_path)
    if profile.model.sha256 != digest:
        raise NestError(
            f"{profile_path.name} was measured on another file (profile sha256"
            f" {profile.model.sha256[:12]}..., {nest_path.name} has {digest[:12]}...)"
        )
    manifest = read_manifest(nest_path)
    if manifest.num_descendants != profile.num_descendants:
        raise NestError(
            f"{nest_path.name} holds {manifest.num_descendants} descendants but"
            f" {profile_path.name} describes {profile.num_descendants}"
        )
    return CatalogueEntry(
        name=name,
        nest_path=nest_path,
        profile=profile,
        input_shape=input_shape(manifest),
        class_names=list(manifest.class_names),
        mean=list(manifest.normalization.mean),
        std=list(manifest.normalization.std),
    )
