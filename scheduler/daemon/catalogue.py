"""The models a daemon can serve: ``NAME.nest`` + ``NAME.profile.json`` pairs in one directory.

Each pair is validated once, when loaded: the `.nest` is opened as a `NestFile` (validated and
hashed in one read, and kept open for the daemon's life: every load of a descendant reads
from it), the profile must parse, must belong to that very file (its recorded sha256 equals
the file's content hash) and must describe as many descendants as the file holds. A pair that
fails any check is reported (logged and listed in ``rejected`` with the reason) and skipped;
one bad file never keeps the others from being served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from nestdnn.errors import NestError
from nestdnn.nestfile import NestFile
from profiles.schema import Backend, Profile, descendant_table, load_profile
from scheduler.problem import Descendant

log = logging.getLogger(__name__)

NEST_SUFFIX = ".nest"
PROFILE_SUFFIX = ".profile.json"


@dataclass(frozen=True)
class CatalogueEntry:
    """A servable model: its open file, its validated profile and its frames' shape."""

    name: str
    nest: NestFile
    profile: Profile

    @property
    def nest_path(self) -> Path:
        return self.nest.path

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.nest.manifest.input_shape

    @property
    def class_names(self) -> list[str]:
        return self.nest.manifest.class_names

    @property
    def mean(self) -> list[float]:
        return self.nest.manifest.normalization.mean

    @property
    def std(self) -> list[float]:
        return self.nest.manifest.normalization.std

    @property
    def num_descendants(self) -> int:
        return self.nest.manifest.num_descendants

    @property
    def sha256(self) -> str:
        return self.nest.sha256

    def profiled(self, backend: Backend) -> list[Descendant]:
        """A(d), M(d) (resident bytes on ``backend``) and L(d) (its median latency there)."""
        return [Descendant(accuracy=c.accuracy, memory_bytes=c.memory_bytes,
                           latency_s=c.latency_s)
                for c in descendant_table(self.profile, backend, memory="resident")]


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
    directory: Path | None = None
    """Where the models were read from (what `Runtime.reload` rescans)."""

    @classmethod
    def load(cls, models_dir: str | Path) -> ModelCatalogue:
        """Validate every pair in ``models_dir``; bad pairs are logged and skipped."""
        models_dir = Path(models_dir)
        if not models_dir.is_dir():
            raise NestError(f"models directory {models_dir} does not exist")
        catalogue = cls(directory=models_dir)
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
        """Record a pair that will not be served (and close its file if it was open)."""
        entry = self.entries.pop(name, None)
        if entry is not None:
            entry.nest.close()
        log.warning("model %s skipped: %s", name, reason)
        self.rejected.append(RejectedModel(name, reason))

    def close(self) -> None:
        """Close every model file (loaded descendants keep working)."""
        for entry in self.entries.values():
            entry.nest.close()


def load_entry(name: str, nest_path: Path) -> CatalogueEntry:
    """Validate one pair: the profile parses, hashes to the file and matches its descendants."""
    profile_path = nest_path.with_name(name + PROFILE_SUFFIX)
    if not profile_path.is_file():
        raise NestError(f"no profile {profile_path.name} beside {nest_path.name}")
    profile = load_profile(profile_path)
    nest = NestFile(nest_path)
    try:
        if profile.model.sha256 != nest.sha256:
            raise NestError(
                f"{profile_path.name} was measured on another file (profile sha256"
                f" {profile.model.sha256[:12]}..., {nest_path.name} has {nest.sha256[:12]}...)"
            )
        if nest.manifest.num_descendants != profile.num_descendants:
            raise NestError(
                f"{nest_path.name} holds {nest.manifest.num_descendants} descendants but"
                f" {profile_path.name} describes {profile.num_descendants}"
            )
    except NestError:
        nest.close()
        raise
    return CatalogueEntry(name=name, nest=nest, profile=profile)
