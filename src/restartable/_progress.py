"""Progress reports that read well on a terminal and in a batch job's log.

One reporter, :class:`Progress`, for the whole library (workflows, the demo,
``restartable push``/``pull``):

- stderr is a terminal and tqdm is installed: a live tqdm bar;
- otherwise (a Slurm log, a pipe, a notebook, no tqdm): one plain,
  self-contained line per meaningful event, through :mod:`logging` at INFO
  (``restartable.*`` loggers), at most one line per ``interval`` seconds
  besides the first and the last event. No ``\\r``, no escape codes.

The library attaches no handler and sets no level: an application that
configured logging decides where the lines go (and whether INFO is shown).
Where nothing is configured at all (no handler on the logger or its
ancestors), the lines are written to stderr directly, as
:data:`logging.lastResort` does for warnings, so a batch job that never
heard of :mod:`logging` still shows its progress.

``verbose=False`` silences a reporter entirely. :func:`announce` prints a
notice (a workflow's "stopped after ... " on SIGTERM) on stderr, on a line
of its own even while bars are drawn.

Example::

    from restartable._progress import Progress

    with Progress("copy", 3, unit="files", interval=0) as progress:
        for name in ("a", "b", "c"):
            progress.update(1, f"{name} copied")
    # in a log:  copy: 1/3 files (33%), a copied  ...  copy: 3/3 files (100%), c copied
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import TracebackType
from typing import IO, Any

from ._env import env_number

__all__ = ["INTERVAL_VARIABLE", "Progress", "announce", "default_interval", "draws_bars", "human_bytes"]

#: Seconds between two progress lines in a log, unless an event is the first
#: or the last (``0``: a line per event). Read when a reporter is created.
INTERVAL_VARIABLE = "RESTARTABLE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0
DEFAULT_LOGGER = "restartable.progress"

# Bars alive in this process: a notice must clear them before it prints.
_live_bars = 0


def default_interval() -> float:
    """``$RESTARTABLE_PROGRESS_INTERVAL`` seconds, else :data:`DEFAULT_INTERVAL`.

    >>> default_interval() >= 0
    True
    """
    value = env_number(INTERVAL_VARIABLE, float, "seconds", "30")
    return DEFAULT_INTERVAL if value is None else value


def human_bytes(nbytes: float) -> str:
    """``1536`` as ``1.5 KiB``.

    >>> human_bytes(512 << 20)
    '512.0 MiB'
    """
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _configured(logger: logging.Logger) -> bool:
    """Whether the application set up logging for ``logger`` (a handler on it or an ancestor)."""
    return logger.hasHandlers()


def _explicitly_silenced(logger: logging.Logger, level: int) -> bool:
    """Whether a level set on a ``restartable`` logger (not the root's default) hides ``level``."""
    current: logging.Logger | None = logger
    while current is not None and current.parent is not None:  # stop below the root
        if current.level != logging.NOTSET:
            return current.level > level
        current = current.parent if current.propagate else None
    return False


def _emit(logger: logging.Logger, level: int, message: str) -> None:
    if _configured(logger):
        logger.log(level, message)
        return
    if _explicitly_silenced(logger, level):
        return
    # Nothing configured: write the line ourselves (logging.lastResort drops INFO).
    stream = sys.stderr
    if stream is None:  # pythonw
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    stream.write(f"{stamp} {message}\n")
    stream.flush()


def announce(message: str) -> None:
    """Print ``message`` on stderr on a line of its own, clearing live progress bars around it.

    For notices that matter whatever ``verbose`` or the logging setup says
    (why a workflow stopped with exit status 75): like the CLI's error
    lines, they always go to stderr, where a batch job's log collects them.

    >>> announce("restartable: SIGTERM received; stopped after lead time 102 hours")  # doctest: +SKIP
    """
    stream = sys.stderr
    if stream is None:  # pythonw
        return
    if _live_bars and "tqdm" in sys.modules:
        from tqdm import tqdm

        # Clear every bar drawn on stderr, print, redraw: the notice never
        # shares a line with a bar.
        with tqdm.external_write_mode(file=stream):
            print(message, file=stream, flush=True)
    else:
        print(message, file=stream, flush=True)


class Progress:
    """A counter of ``total`` events of ``desc``: a live bar on a terminal, log lines elsewhere.

    Parameters
    ----------
    desc:
        What progresses, the start of every line (``"ensemble"``).
    total:
        Events expected (``None`` if unknown).
    unit:
        What is counted, plural (``"member batches"``).
    initial:
        Events already done before this run (a resumed workflow).
    verbose:
        ``False``: report nothing at all.
    interval:
        Seconds between two log lines, besides the first and last event;
        ``None``: :func:`default_interval`; ``0``: every event.
    leave:
        Keep the bar on screen once closed (nested bars pass ``False``).
    logger:
        Logger name or logger for the lines (default ``restartable.progress``).
    bar:
        Force (``True``) or refuse (``False``) a bar; ``None``: a bar when
        stderr is a terminal and tqdm is installed.

    Example
    -------
    >>> with Progress("push", 2, unit="rows", interval=0, bar=False) as progress:
    ...     progress.update(1, "row a copied")
    ...     progress.update(1, "row b copied")
    """

    def __init__(
        self,
        desc: str,
        total: int | None,
        *,
        unit: str = "steps",
        initial: int = 0,
        verbose: bool = True,
        interval: float | None = None,
        leave: bool = True,
        logger: str | logging.Logger = DEFAULT_LOGGER,
        bar: bool | None = None,
    ) -> None:
        self.desc, self.total, self.unit, self.n = desc, total, unit, initial
        self.logger = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
        self.interval = default_interval() if interval is None else float(interval)
        self._bar: Any = None
        self._last: float | None = None
        self._pending: str | None = None
        self._closed = False
        self.mode = "off"
        if not verbose:
            return
        wants_bar = draws_bars() if bar is None else bar
        self.mode = "bar" if wants_bar else "log"
        if self.mode == "bar":
            global _live_bars
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, initial=initial, leave=leave, file=sys.stderr, **_fixed_size())
            _live_bars += 1

    def line(self, event: str = "") -> str:
        """The self-contained text of the current state: ``ensemble: 3/8 member batches (37%), <event>``."""
        if self.total is None:
            text = f"{self.desc}: {self.n} {self.unit}"
        elif self.total > 0:
            text = f"{self.desc}: {self.n}/{self.total} {self.unit} ({self.n * 100 // self.total}%)"
        else:
            text = f"{self.desc}: {self.n}/{self.total} {self.unit}"
        return f"{text}, {event}" if event else text

    def update(self, n: int = 1, event: str = "") -> None:
        """Count ``n`` more events; ``event`` says what just happened (``"lead time 48 hours committed"``)."""
        if self._closed:
            return
        self.n += n
        if self.mode == "bar":
            if event:
                self._bar.set_postfix_str(event, refresh=False)
            self._bar.update(n)
        elif self.mode == "log":
            last = self.total is not None and self.n >= self.total
            self._log(self.line(event), force=last)

    def note(self, event: str) -> None:
        """Report progress within the current event (bytes of a large file) without counting one."""
        if self._closed:
            return
        if self.mode == "bar":
            self._bar.set_postfix_str(event, refresh=True)
        elif self.mode == "log":
            self._log(self.line(event), force=False)

    def _log(self, text: str, force: bool) -> None:
        now = time.monotonic()
        if force or self._last is None or now - self._last >= self.interval:
            _emit(self.logger, logging.INFO, text)
            self._last, self._pending = now, None
        else:
            self._pending = text  # shown at close if nothing follows it

    def flush(self) -> None:
        """Log now the last line the rate held back (before a notice that must follow it)."""
        if self._pending is not None:
            _emit(self.logger, logging.INFO, self._pending)
            self._last, self._pending = time.monotonic(), None

    def close(self) -> None:
        """Finish: a bar is closed (and kept if ``leave``); the last line held back by the rate is logged."""
        global _live_bars
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            _live_bars -= 1
        self.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def draws_bars() -> bool:
    """Whether a :class:`Progress` made now draws a bar: stderr is a terminal and tqdm is installed.

    >>> isinstance(draws_bars(), bool)
    True
    """
    return _stderr_is_terminal() and _tqdm_available()


def _tqdm_available() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _stderr_is_terminal() -> bool:
    stream: IO[str] | None = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def _fixed_size() -> dict[str, int]:
    """Nothing (tqdm measures the terminal), or 80 x 24 for a terminal that reports no size (a bare pty).

    tqdm draws nothing in a terminal of width 0, nor a bar below its height 0.
    """
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, ValueError, OSError):
        return {}
    return {} if size.columns > 0 and size.lines > 0 else {"ncols": 80, "nrows": 24}
