"""Values from untrusted files, shown in error messages at a bounded length."""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["escaped", "shown"]

_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlevel = 3


def shown(value: Any) -> str:
    """``repr(value)``, cut short: a hostile file may hold a name of a gigabyte.

    >>> shown("x" * 1000)[:12]
    "'xxxxxxxxxxx"
    >>> shown(True)
    'True'
    """
    return _REPR.repr(value)


def escaped(text: str) -> str:
    r"""``text`` with every control character but newlines written as an escape.

    Names and values printed come from a store that anyone with write access
    may have edited: an escape code there must not drive the terminal.

    >>> print(escaped("lead\x1b[2Jtime"))
    lead\x1b[2Jtime
    """
    if text.isprintable():
        return text
    return "\n".join("".join(c if c.isprintable() else repr(c)[1:-1] for c in line) for line in text.split("\n"))
