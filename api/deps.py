"""Shared FastAPI dependencies."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError

from api.daemon import Daemon


async def get_daemon(request: Request) -> Daemon:
    """The daemon object of this FastAPI app (async: no thread hop for a lookup)."""
    return request.app.state.daemon


DaemonDep = Annotated[Daemon, Depends(get_daemon)]


async def known_query_only(request: Request) -> None:
    """Dependency of every route: a query parameter the operation does not declare is a 422,
    as an unknown body field is (a typo such as ``?topk=3`` must not be silently ignored)."""
    route = request.scope.get("route")
    declared = _query_names(route.dependant) if hasattr(route, "dependant") else set()
    refuse_unknown_query(request.query_params.keys(), declared)


def refuse_unknown_query(sent: Iterable[str], declared: set[str]) -> None:
    """422, worded as FastAPI words extra fields, for query parameters not in ``declared``."""
    errors = [
        {"type": "extra_forbidden", "loc": ("query", name), "msg": "Extra inputs are not permitted"}
        for name in dict.fromkeys(sent)
        if name not in declared
    ]
    if errors:
        raise RequestValidationError(errors)


def _query_names(dependant: Any) -> set[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names
