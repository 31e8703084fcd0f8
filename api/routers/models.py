"""Models: what the daemon can serve, and each model's descendant table from its profile."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import DaemonDep
from api.openapi import problems
from api.schemas import DescendantOut, ModelDetail, ModelList, ModelSummary
from api.views import rejected_out
from scheduler.daemon import CatalogueEntry, UnknownModel

router = APIRouter(prefix="/v1/models", tags=["models"])


def _summary(entry: CatalogueEntry) -> dict:
    return {
        "name": entry.name,
        "input_shape": list(entry.input_shape),
        "num_classes": len(entry.class_names),
        "descendants": len(entry.profile.descendants),
        "dataset": entry.profile.dataset.name,
    }


def _rows(entry: CatalogueEntry) -> list[DescendantOut]:
    return [
        DescendantOut(
            index=d.index,
            widths=d.widths,
            params=d.params,
            bytes=d.bytes,
            macs=d.macs,
            accuracy=d.accuracy,
            latency_ms={b: f.latency.median_s * 1000.0 for b, f in d.backends.items()},
            latency_p90_ms={b: f.latency.p90_s * 1000.0 for b, f in d.backends.items()},
        )
        for d in entry.profile.descendants
    ]


@router.get("", response_model=ModelList)
def list_models(daemon: DaemonDep) -> ModelList:
    """The servable models, and the files in the models directory that were rejected."""
    catalogue = daemon.catalogue
    return ModelList(
        models=[ModelSummary(**_summary(e)) for _, e in sorted(catalogue.entries.items())],
        rejected=[rejected_out(r) for r in catalogue.rejected],
    )


@router.get("/{name}", response_model=ModelDetail, responses=problems(404))
def show_model(name: str, daemon: DaemonDep) -> ModelDetail:
    """One model: input, classes, normalisation and its descendant table."""
    entry = daemon.catalogue.entries.get(name)
    if entry is None:
        known = ", ".join(sorted(daemon.catalogue.entries)) or "none"
        raise UnknownModel(f"no model named {name!r} (served: {known})")
    device = entry.profile.device
    return ModelDetail(
        **_summary(entry),
        class_names=list(entry.class_names),
        mean=list(entry.mean),
        std=list(entry.std),
        profiled_on=f"{device.cpu_model}, {device.threads} threads",
        backends=list(entry.profile.backends),
        table=_rows(entry),
    )
