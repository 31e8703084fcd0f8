"""Errors that carry a message meant for the user (the CLI prints it in one line, exit 2)."""


class NestError(Exception):
    """Bad input from the user: a file, an argument or a request that cannot be used as given."""
