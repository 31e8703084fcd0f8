"""Errors that carry a message meant for the user (the CLI prints it in one line, exit 2)."""

from __future__ import annotations

from pydantic import ValidationError


class NestError(Exception):
    """Bad input from the user: a file, an argument or a request that cannot be used as given."""


def validation_message(error: ValidationError) -> str:
    """One line naming every invalid field of a pydantic error by its path.

    ``descendants.0.accuracy: Input should be less than or equal to 1; created: Field
    required``; an error of the whole object is named ``(top level)``.
    """
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
