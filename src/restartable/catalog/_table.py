"""The catalog as a table: what ``print(checkpoint)`` and ``restartable ls`` show."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._text import escaped

if TYPE_CHECKING:
    from ._entries import CheckpointEntry


def _display(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, np.timedelta64):
        if np.isnat(value):
            return str(value)
        if value == np.timedelta64(0, "ns"):
            return "0 hours"
        # The largest unit that shows the value whole: "6 hours", "90 minutes".
        for unit in ("D", "h", "m", "s", "ms", "us", "ns"):
            try:
                count = value / np.timedelta64(1, unit)
            except TypeError:
                continue
            if np.isfinite(count) and count == int(count):
                return str(np.timedelta64(int(count), unit)) if unit != "D" else f"{int(count)} days"
        return str(value)
    try:
        text = str(value)
    except Exception:  # numpy cannot print some values a hostile payload can hold
        return "<unprintable>"
    return _cell(text)


def _cell(text: str) -> str:
    """One line of printable text, at most 32 characters.

    Metadata is whatever the writer (or whoever edited the store) recorded:
    a 2-D array prints over several lines and a key may hold terminal
    escape codes, neither of which may break the table or the terminal.
    """
    text = escaped(" ".join(text.split()))
    return text if len(text) <= 32 else text[:29] + "..."


def entries_table(entries: tuple[CheckpointEntry, ...] | list[CheckpointEntry]) -> list[list[str]]:
    """Rows of the catalog table shown by ``print(checkpoint)`` and ``restartable ls``."""
    # Mappings (a workflow's identity) do not fit a table cell; `restartable show`
    # prints them. Sequences do, shortened (earth2studio's completed_ensembles).
    keys = sorted(
        {
            key
            for entry in entries
            for key, value in entry.metadata.items()
            if key != "lead_time" and not isinstance(value, dict)
        },
        key=str,  # keys may be str and int
    )
    header = ["row", "sequence", "lead_time", *(_cell(str(key)) for key in keys), "write_count", "states", "saved_at"]
    table = [header]
    for index, entry in enumerate(entries):
        table.append(
            [
                str(index),
                str(entry.sequence),
                _display(entry.lead_time),
                *(_display(entry.metadata.get(key)) for key in keys),
                str(entry.write_count),
                str(len(entry.state_ids)),
                _cell(entry.saved_at[:19].replace("T", " ")),
            ]
        )
    return table


def format_table(table: list[list[str]]) -> str:
    """``table`` as aligned text columns, one line per row."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip() for row in table
    )
