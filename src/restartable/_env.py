"""Numbers read from environment variables, refused with a message that names the variable."""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["EnvironmentValueError", "env_number"]


class EnvironmentValueError(ValueError):
    """An environment variable of restartable holds a value it cannot use (the CLI exits 2 for it)."""


def env_number(name: str, parse: Callable[[str], float], unit: str, example: str) -> float | None:
    """The non-negative number ``$name`` holds, or ``None`` when it is unset or blank.

    Raises :class:`EnvironmentValueError` (a :class:`ValueError`) naming the variable, its value, the unit and
    an example of a good value when it holds anything else (``nan`` too).

    >>> os.environ["RESTARTABLE_EXAMPLE"] = "2.5"
    >>> env_number("RESTARTABLE_EXAMPLE", float, "seconds", "30")
    2.5
    >>> del os.environ["RESTARTABLE_EXAMPLE"]
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = parse(text)
    except ValueError:
        value = -1
    if not value >= 0:  # also refuses nan
        raise EnvironmentValueError(
            f"{name}={text!r} is not a non-negative number of {unit}; unset it or give e.g. {example}"
        )
    return value
