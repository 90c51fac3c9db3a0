"""A run's rows on a timeline: what ``restartable ls --plot FILE`` draws.

Two halves, kept apart so that each can be checked on its own:

- :func:`timeline` reads a store (every rank) into a :class:`Timeline`:
  per rank, the progress each whole row committed (lead time, else the
  iterator step, else the write count) at its ``saved_at``, and the marks
  a reader needs to tell where a job stalled or was killed: rows retired
  (sequence numbers missing between the rows kept), damaged rows, leftovers
  of interrupted commits, and the restart point (the newest row every rank
  has, where a resume starts; a *fallback* when newer rows are damaged).
- :func:`write_plot` draws it: ``.html`` as a self-contained page with an
  inline SVG (no dependency, no script), ``.png`` with matplotlib (the
  ``plot`` extra).

Rows do not record how long their commit took, so the timeline shows commit
times, and each point's tooltip the interval since the rank's previous row.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import entry_from_row
from .errors import CheckpointCorruptError
from .store import RowStore, Scan, open_store, rank_stores, scan_rows
from .store._layout import is_url, rank_of_folder, sequence_of

__all__ = ["Mark", "PlotError", "Point", "Series", "Timeline", "timeline", "timeline_from_scans", "write_plot"]

PLOT_SUFFIXES = (".png", ".html")
INSTALL_HINT = "pip install 'restartable[plot]'"


class PlotError(Exception):
    """The plot cannot be written as asked (a file type not drawn, matplotlib missing)."""


@dataclass(frozen=True)
class Point:
    """One whole row: its progress committed at ``saved_at``."""

    sequence: int
    commit_id: str
    saved_at: _dt.datetime
    progress: float
    label: str
    pinned: bool = False
    restart_point: bool = False


@dataclass(frozen=True)
class Mark:
    """Something a reader should see: ``kind`` is ``retired``, ``damaged`` or ``interrupted``.

    ``time`` and ``progress`` place it: between the rows around it for
    retired and damaged rows (their own time is unknown or unreadable), at
    the leftover's modification time for an interrupted commit of a local
    store (else after the last row).
    """

    kind: str
    time: _dt.datetime
    progress: float
    detail: str
    sequences: tuple[int, ...] = ()


@dataclass(frozen=True)
class Series:
    """One rank's rows and marks."""

    rank: int
    location: str
    points: tuple[Point, ...]
    marks: tuple[Mark, ...]


@dataclass(frozen=True)
class Timeline:
    """Every rank's series; ``progress_label`` names the y axis."""

    series: tuple[Series, ...]
    progress_label: str
    restart_sequence: int | None = None
    fallback: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def start(self) -> _dt.datetime | None:
        times = [p.saved_at for s in self.series for p in s.points] + [m.time for s in self.series for m in s.marks]
        return min(times, default=None)

    @property
    def end(self) -> _dt.datetime | None:
        times = [p.saved_at for s in self.series for p in s.points] + [m.time for s in self.series for m in s.marks]
        return max(times, default=None)

    def marks(self, kind: str) -> list[Mark]:
        return [m for s in self.series for m in s.marks if m.kind == kind]


# --------------------------------------------------------------------------- data


def timeline(target: RowStore | str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> Timeline:
    """The timeline of the store at ``target`` (a path, URL or store; every rank folder under it).

    >>> import tempfile, numpy as np
    >>> from restartable import Checkpoint
    >>> path = tempfile.mkdtemp()
    >>> with Checkpoint("run", path=path, mode="append") as session:
    ...     for hours in (6, 12):
    ...         _ = session.write(lead_time=np.timedelta64(hours, "h"))
    >>> [p.progress for p in timeline(path).series[0].points]
    [6.0, 12.0]
    """
    stores = rank_stores(open_store(target, storage_options))
    return timeline_from_scans([(store, scan_rows(store), leftovers_of(store)) for store in stores])


def leftovers_of(store: RowStore) -> list[str]:
    """Leftovers of interrupted commits in ``store`` (listed only; ``restartable gc`` removes them)."""
    interrupted, _retired = store.clean_leftovers(dry_run=True)
    return interrupted


def timeline_from_scans(scans: Sequence[tuple[RowStore, Scan, Sequence[str]]]) -> Timeline:
    """A :class:`Timeline` from ``(store, scan, leftovers)`` per rank, as :func:`timeline` reads them."""
    raw: list[tuple[int, RowStore, list[dict[str, Any]], list[tuple[int, str | None]], Sequence[str]]] = []
    for index, (store, scan, leftovers) in enumerate(scans):
        rows: list[dict[str, Any]] = []
        damaged: list[tuple[int, str | None]] = []
        for problem in scan.problems:
            sequence = sequence_of(problem.row.rstrip("/").rsplit("/", 1)[-1])
            if sequence is not None:
                damaged.append((sequence, problem.row))
        rank = rank_of_folder(store.location.rstrip("/").rsplit("/", 1)[-1])
        for row in scan.rows:
            try:
                entry = entry_from_row(row)
            except CheckpointCorruptError:
                damaged.append((row.sequence, str(row.path)))
                continue
            if rank is None:
                rank = entry.rank if len(scans) == 1 else index
            rows.append(
                {
                    "sequence": row.sequence,
                    "commit_id": row.commit_id,
                    "saved_at": _parse_time(entry.saved_at),
                    "lead_time": entry.lead_time,
                    "step": row.body.get("step"),
                    "write_count": entry.write_count,
                    "pinned": entry.pinned,
                }
            )
        raw.append((index if rank is None else rank, store, rows, sorted(damaged, key=lambda d: d[0]), leftovers))
    kind, label = _progress_kind([r for _, _, rows, _, _ in raw for r in rows])
    whole = {rank: {r["sequence"] for r in rows} for rank, _, rows, _, _ in raw}
    common = set.intersection(*whole.values()) if whole else set()
    restart = max(common, default=None)
    fallback = restart is not None and any(d > restart for _, _, _, damaged, _ in raw for d, _ in damaged)
    series = tuple(
        _series(rank, store, rows, damaged, leftovers, kind, restart)
        for rank, store, rows, damaged, leftovers in sorted(raw, key=lambda item: item[0])
    )
    return Timeline(series=series, progress_label=label, restart_sequence=restart, fallback=fallback)


def _parse_time(text: str) -> _dt.datetime:
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        return _dt.datetime.fromtimestamp(0, _dt.timezone.utc)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=_dt.timezone.utc)


def _hours(value: Any) -> float | None:
    if isinstance(value, np.timedelta64) and not np.isnat(value):
        return float(value / np.timedelta64(1, "s")) / 3600.0
    if isinstance(value, _dt.timedelta):
        return value.total_seconds() / 3600.0
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and np.isfinite(value):
        return float(value)
    return None


def _progress_kind(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """What the y axis shows: the first of lead time, step, write count that every row has."""
    if rows and all(_hours(r["lead_time"]) is not None for r in rows):
        return "hours", "lead time committed (hours)"
    if rows and all(_number(r["lead_time"]) is not None for r in rows):
        return "lead_time", "lead time committed"
    if rows and all(_number(r["step"]) is not None for r in rows):
        return "step", "step committed"
    return "write_count", "writes committed"


def _progress(row: dict[str, Any], kind: str) -> tuple[float, str]:
    if kind == "hours":
        hours = _hours(row["lead_time"])
        assert hours is not None
        return hours, f"lead time {hours:g} h"
    if kind in ("lead_time", "step"):
        value = _number(row[kind])
        assert value is not None
        return value, f"{kind.replace('_', ' ')} {value:g}"
    return float(row["write_count"]), f"write {row['write_count']}"


def _between(points: list[Point], sequence: int) -> tuple[_dt.datetime, float]:
    """Where a row known only by its sequence number goes: after the row before it, before the next."""
    before = [p for p in points if p.sequence < sequence]
    after = [p for p in points if p.sequence > sequence]
    if before and after:
        a, b = before[-1].saved_at, after[0].saved_at
        return a + (b - a) / 2, before[-1].progress
    if before:
        return before[-1].saved_at, before[-1].progress
    if after:
        return after[0].saved_at, 0.0
    return _dt.datetime.fromtimestamp(0, _dt.timezone.utc), 0.0


def _series(
    rank: int,
    store: RowStore,
    rows: list[dict[str, Any]],
    damaged: list[tuple[int, str | None]],
    leftovers: Sequence[str],
    kind: str,
    restart: int | None,
) -> Series:
    points: list[Point] = []
    for row in sorted(rows, key=lambda r: r["sequence"]):
        progress, label = _progress(row, kind)
        points.append(
            Point(
                sequence=row["sequence"],
                commit_id=row["commit_id"],
                saved_at=row["saved_at"],
                progress=progress,
                label=label,
                pinned=row["pinned"],
                restart_point=row["sequence"] == restart,
            )
        )
    marks: list[Mark] = []
    present = {p.sequence for p in points} | {sequence for sequence, _ in damaged}
    kept = sorted(present)
    # Sequences are numbered from 1; every number missing below the newest
    # row present was committed once and retired since.
    missing = [s for s in range(1, kept[-1]) if s not in present] if kept else []
    for run in _runs(missing):
        time, progress = _between(points, run[0])
        count = len(run)
        span = f"{run[0]}" if count == 1 else f"{run[0]}-{run[-1]}"
        marks.append(
            Mark("retired", time, progress, f"{count} row{'s' * (count != 1)} retired (sequence {span})", tuple(run))
        )
    for sequence, where in damaged:
        time, progress = _between(points, sequence)
        if where is not None and not is_url(where):
            # A local row folder's time is that of its commit (the rename); its manifest cannot say.
            with contextlib.suppress(OSError):
                time = _dt.datetime.fromtimestamp(os.stat(where).st_mtime, _dt.timezone.utc)
        detail = f"row {sequence} damaged"
        if restart is not None and sequence > restart:
            detail += f"; a resume falls back to row {restart}"
        marks.append(Mark("damaged", time, progress, detail, (sequence,)))
    last_time, last_progress = (points[-1].saved_at, points[-1].progress) if points else _between(points, 0)
    for leftover in leftovers:
        time = last_time
        if not is_url(leftover):
            # Removed meanwhile (gc): placed after the last row.
            with contextlib.suppress(OSError):
                time = max(last_time, _dt.datetime.fromtimestamp(os.stat(leftover).st_mtime, _dt.timezone.utc))
        name = leftover.rstrip("/").rsplit("/", 1)[-1]
        marks.append(Mark("interrupted", time, last_progress, f"interrupted commit left {name} (restartable gc)"))
    return Series(rank=rank, location=store.location, points=tuple(points), marks=tuple(marks))


def _runs(numbers: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for n in numbers:
        if runs and runs[-1][-1] == n - 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


# --------------------------------------------------------------------------- drawing


def check_plot_target(path: str | os.PathLike[str]) -> str:
    """The file type of ``path`` (``.png`` or ``.html``), checked before any work.

    Raises :class:`PlotError` for another suffix, or for ``.png`` without matplotlib.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise PlotError(f"--plot {os.fspath(path)!r}: the file must end in .png or .html")
    if suffix == ".png":
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise PlotError(
                f"--plot {os.fspath(path)!r}: a PNG needs matplotlib: {INSTALL_HINT} "
                "(or write .html, which needs nothing)"
            ) from None
    return suffix


def write_plot(data: Timeline, path: str | os.PathLike[str]) -> None:
    """Draw ``data`` into ``path``: ``.html`` (inline SVG, no dependency) or ``.png`` (matplotlib).

    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "run.html")
    >>> write_plot(Timeline(series=(), progress_label="step committed"), out)
    >>> open(out).read().startswith("<!DOCTYPE html>")
    True
    """
    if check_plot_target(path) == ".png":
        _write_png(data, Path(path))
    else:
        Path(path).write_text(render_html(data), encoding="utf-8")


_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_MARK_STYLE = {
    "retired": ("#7f7f7f", "retired rows"),
    "damaged": ("#d62728", "damaged row"),
    "interrupted": ("#000000", "interrupted commit"),
}


def _elapsed(seconds: float) -> str:
    if seconds < 120:
        return f"+{float(f'{seconds:.3g}'):g}s"
    seconds = round(seconds)
    if seconds < 7200:
        return f"+{seconds // 60}m{seconds % 60:02d}s"
    return f"+{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** np.floor(np.log10(raw))
    step = float(min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw))
    first = np.ceil(low / step) * step
    return [float(v) for v in np.arange(first, high + step * 1e-9, step)]


def render_html(data: Timeline) -> str:
    """``data`` as a self-contained HTML page: one inline SVG, one ``<g class="series">`` per rank."""
    width, height, left, right, top, bottom = 960, 480, 70, 200, 40, 50
    start, end = data.start, data.end
    title = "restartable timeline"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title>",
        "<style>body{font-family:sans-serif;margin:1em}svg text{font-size:12px}"
        ".axis{stroke:#444}.grid{stroke:#ddd}</style>",
        "</head><body>",
        f"<h1>{title}</h1>",
    ]
    if start is None or end is None:
        parts += ["<p>No rows.</p>", "</body></html>"]
        return "\n".join(parts) + "\n"
    span = (end - start).total_seconds() or 1.0
    values = [p.progress for s in data.series for p in s.points] + [m.progress for s in data.series for m in s.marks]
    low, high = min([0.0, *values]), max([1.0, *values])
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(moment: _dt.datetime) -> float:
        return left + plot_w * (moment - start).total_seconds() / span

    def y(value: float) -> float:
        return top + plot_h * (1 - (value - low) / (high - low))

    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">'
    ]
    for tick in _nice_ticks(low, high):
        svg.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>')
        svg.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for tick in _nice_ticks(0.0, span):
        tx = left + plot_w * tick / span
        svg.append(f'<line class="grid" x1="{tx:.1f}" x2="{tx:.1f}" y1="{top}" y2="{top + plot_h}"/>')
        svg.append(f'<text x="{tx:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_elapsed(tick)}</text>')
    svg.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}"/>')
    svg.append(f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}"/>')
    svg.append(
        f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle">'
        f"wall-clock time since {html.escape(start.isoformat(timespec='seconds'))}</text>"
    )
    svg.append(
        f'<text transform="translate(16 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
        f"{html.escape(data.progress_label)}</text>"
    )
    for index, series in enumerate(data.series):
        color = _COLORS[index % len(_COLORS)]
        svg.append(f'<g class="series" data-rank="{series.rank}" stroke="{color}" fill="{color}">')
        if series.points:
            # Progress committed holds until the next commit: a step line, extended to the end.
            coords = []
            for i, point in enumerate(series.points):
                if i:
                    coords.append(f"{x(point.saved_at):.1f},{y(series.points[i - 1].progress):.1f}")
                coords.append(f"{x(point.saved_at):.1f},{y(point.progress):.1f}")
            coords.append(f"{x(end):.1f},{y(series.points[-1].progress):.1f}")
            svg.append(f'<polyline fill="none" stroke-width="2" points="{" ".join(coords)}"/>')
        previous: Point | None = None
        for point in series.points:
            gap = "" if previous is None else f", {_elapsed((point.saved_at - previous.saved_at).total_seconds())}"
            tip = (
                f"rank {series.rank}, row {point.commit_id}: {point.label}, "
                f"saved {point.saved_at.isoformat(timespec='seconds')}{gap}"
                + (", pinned" if point.pinned else "")
                + (", restart point" if point.restart_point else "")
            )
            cls = "point restart-point" if point.restart_point else "point"
            radius = 6 if point.restart_point else 3.5
            svg.append(
                f'<circle class="{cls}" data-commit-id="{html.escape(point.commit_id)}" cx="{x(point.saved_at):.1f}" '
                f'cy="{y(point.progress):.1f}" r="{radius}"'
                + (' fill="white" stroke-width="2"' if point.restart_point else "")
                + f"><title>{html.escape(tip)}</title></circle>"
            )
            previous = point
        svg.append("</g>")
        for mark in series.marks:
            mark_color, _ = _MARK_STYLE[mark.kind]
            mx, my = x(mark.time), y(mark.progress)
            tip = html.escape(f"rank {series.rank}: {mark.detail}")
            svg.append(f'<g class="mark {mark.kind}" data-rank="{series.rank}" stroke="{mark_color}" stroke-width="2">')
            if mark.kind == "retired":
                svg.append(f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{top + plot_h}" y2="{top + plot_h - 10}"/>')
            else:
                svg.append(f'<line x1="{mx - 5:.1f}" x2="{mx + 5:.1f}" y1="{my - 5:.1f}" y2="{my + 5:.1f}"/>')
                svg.append(f'<line x1="{mx - 5:.1f}" x2="{mx + 5:.1f}" y1="{my + 5:.1f}" y2="{my - 5:.1f}"/>')
            svg.append(f"<title>{tip}</title></g>")
    legend_y = top
    for index, series in enumerate(data.series):
        color = _COLORS[index % len(_COLORS)]
        ly = legend_y + 18 * index
        svg.append(f'<rect x="{width - right + 20}" y="{ly - 9}" width="12" height="12" fill="{color}"/>')
        svg.append(f'<text x="{width - right + 38}" y="{ly + 2}">rank {series.rank}</text>')
    ly = legend_y + 18 * len(data.series) + 10
    for kind, (mark_color, text) in _MARK_STYLE.items():
        if data.marks(kind):
            svg.append(f'<rect x="{width - right + 20}" y="{ly - 9}" width="12" height="12" fill="{mark_color}"/>')
            svg.append(f'<text x="{width - right + 38}" y="{ly + 2}">{text}</text>')
            ly += 18
    svg.append("</svg>")
    parts.extend(svg)
    parts.append(f"<p>{html.escape(_summary(data))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _summary(data: Timeline) -> str:
    rows = sum(len(s.points) for s in data.series)
    text = f"{len(data.series)} rank(s), {rows} whole row(s)"
    if data.restart_sequence is not None:
        text += f"; a resume starts from row {data.restart_sequence}"
        if data.fallback:
            text += " (a fallback: newer rows are damaged)"
    counts = {kind: len(data.marks(kind)) for kind in _MARK_STYLE}
    retired = sum(len(m.sequences) for m in data.marks("retired"))
    text += f"; {retired} row(s) retired, {counts['damaged']} damaged, {counts['interrupted']} interrupted commit(s)"
    return text + "."


def _write_png(data: Timeline, path: Path) -> None:
    # Figure and the Agg canvas, not pyplot: no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    start, end = data.start, data.end
    if start is None or end is None:
        axes.text(0.5, 0.5, "no rows", ha="center", va="center", transform=axes.transAxes)
    else:
        span = (end - start).total_seconds()
        unit, per = next(
            (u, n) for u, n in (("hours", 3600.0), ("minutes", 60.0), ("seconds", 1.0)) if span >= 2 * n or n == 1
        )

        def elapsed(moment: _dt.datetime) -> float:
            return (moment - start).total_seconds() / per

        for index, series in enumerate(data.series):
            color = _COLORS[index % len(_COLORS)]
            if series.points:
                xs = [elapsed(p.saved_at) for p in series.points] + [elapsed(end)]
                ys = [p.progress for p in series.points] + [series.points[-1].progress]
                axes.step(xs, ys, where="post", color=color, linewidth=2, label=f"rank {series.rank}")
                axes.plot(xs[:-1], ys[:-1], "o", color=color, markersize=4)
                restart = [p for p in series.points if p.restart_point]
                axes.plot(
                    [elapsed(p.saved_at) for p in restart],
                    [p.progress for p in restart],
                    "o",
                    markerfacecolor="white",
                    markeredgecolor=color,
                    markersize=10,
                )
        for kind, (mark_color, text) in _MARK_STYLE.items():
            marks = data.marks(kind)
            if not marks:
                continue
            if kind == "retired":
                axes.plot(
                    [elapsed(m.time) for m in marks],
                    [0] * len(marks),
                    "|",
                    color=mark_color,
                    markersize=14,
                    transform=axes.get_xaxis_transform(),
                    label=text,
                )
            else:
                axes.plot(
                    [elapsed(m.time) for m in marks],
                    [m.progress for m in marks],
                    "x",
                    color=mark_color,
                    markersize=10,
                    markeredgewidth=2,
                    label=text,
                )
        axes.set_xlabel(f"{unit} since {start.isoformat(timespec='seconds')}")
        axes.legend(loc="upper left", fontsize="small")
    axes.set_ylabel(data.progress_label)
    axes.set_title(_summary(data), fontsize="small")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
