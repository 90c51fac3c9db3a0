"""What the three workflows share: sessions, IO layout, rollouts, graceful stop."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._progress import Progress, announce
from ..catalog import Checkpoint, NullCheckpoint
from ..distributed import detect_rank_and_world_size
from ..state import states_of
from .coords import map_coords, split_coords

__all__ = ["PREEMPTED_EXIT_CODE", "WorkflowPreempted"]

#: Exit status of a workflow stopped by SIGTERM/SIGUSR1 after committing its
#: progress (EX_TEMPFAIL: "try again later" — resume by running it again).
PREEMPTED_EXIT_CODE = 75
LOGGER = "restartable.workflows"
_STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class WorkflowPreempted(SystemExit):
    """Raised when a stop signal arrived: progress is committed, run again to resume.

    A subclass of :class:`SystemExit`, so an unhandled one ends the process
    with :data:`PREEMPTED_EXIT_CODE` instead of a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


@contextlib.contextmanager
def open_session(checkpoint: Any, independent_ranks: bool = False) -> Iterator[Any]:
    """The session a workflow records into.

    ``None`` gives a :class:`NullCheckpoint`; a session is used as is; a
    :class:`Checkpoint` is entered for the duration of the workflow. With
    ``independent_ranks`` (ranks that never exchange data, as ensemble
    members spread over ranks) each rank resumes from its own newest row:
    the ranks' commit counts differ, so a common restart point would only
    throw work away.
    """
    if checkpoint is None:
        yield NullCheckpoint()
    elif isinstance(checkpoint, Checkpoint):
        consistent = checkpoint.consistent
        if independent_ranks:
            checkpoint.consistent = False
        try:
            with checkpoint as session:
                yield session
        finally:
            checkpoint.consistent = consistent
    else:
        yield checkpoint


def rank_and_world_size(checkpoint: Any) -> tuple[int, int]:
    """The rank and world size of a run: the checkpoint's, else detected."""
    owner = getattr(checkpoint, "checkpoint", checkpoint)  # a session's checkpoint
    rank, world = getattr(owner, "rank", None), getattr(owner, "world_size", None)
    if isinstance(rank, int) and isinstance(world, int):
        return rank, world
    return detect_rank_and_world_size()


class StopRequest:
    """Set by SIGTERM/SIGUSR1 while a workflow runs; checked after each step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Turn stop signals into a request the workflow honours at its next safe boundary."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        request.signal = signum

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_now(session: Any, request: StopRequest, where: str) -> None:
    """Commit everything pending and raise :class:`WorkflowPreempted`."""
    entry = session.flush()
    name = signal.Signals(request.signal).name if request.signal is not None else "stop"
    committed = f"row {entry.commit_id}" if entry is not None else f"row {getattr(session, 'commit_id', None)}"
    message = (
        f"restartable: {name} received; stopped after {where}, progress committed ({committed}). "
        "Run the same command again to resume."
    )
    # On stderr whatever ``verbose`` says (it explains exit status 75), on a
    # line of its own even while progress bars are drawn.
    announce(message)
    raise WorkflowPreempted(message)


def default_device(device: Any) -> Any:
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_device(component: Any, device: Any) -> Any:
    move = getattr(component, "to", None)
    return move(device) if callable(move) else component


def io_coords(
    model_output: OrderedDict[str, np.ndarray],
    leading: OrderedDict[str, np.ndarray],
    lead: np.ndarray,
    output_coords: dict[str, np.ndarray],
) -> tuple[OrderedDict[str, np.ndarray], np.ndarray]:
    """Coordinates of the IO arrays: leading dims, lead_time, then the model's spatial dims."""
    total: OrderedDict[str, np.ndarray] = OrderedDict(leading)
    total["lead_time"] = lead
    for key, value in model_output.items():
        if key in total or key in ("batch", "time", "lead_time") or np.asarray(value).shape == (0,):
            continue
        total[key] = np.asarray(value)
    for key in list(total):
        if key in output_coords and np.asarray(output_coords[key]).size:
            total[key] = np.asarray(output_coords[key])
    variables = np.array([str(v) for v in total.pop("variable")])
    return total, variables


def progress(total: int, desc: str, verbose: bool, unit: str, initial: int = 0, leave: bool = True) -> Progress:
    """The workflows' progress: a bar on a terminal, lines through the ``restartable.workflows`` logger elsewhere."""
    return Progress(desc, total, unit=unit, initial=initial, verbose=verbose, leave=leave, logger=LOGGER)


def rollout(
    iterator: Iterator[tuple[Any, OrderedDict[str, np.ndarray]]],
    final_lead: Any,
    done_lead: Any,
    write: Any,
    session: Any,
    stop: StopRequest,
    bar: Progress,
    extra_metadata: dict[str, Any] | None = None,
    rewrite: bool = False,
    final_metadata: dict[str, Any] | None = None,
) -> None:
    """Drive ``iterator`` to ``final_lead``, writing every step after ``done_lead``.

    Steps at or before ``done_lead`` were written before an interruption: a
    model that did not restore its state recomputes them, and they are
    written again only with ``rewrite`` (earth2studio's behaviour; they are
    bitwise what was written). Each step after ``done_lead`` is a restart
    boundary, recorded with ``extra_metadata``, and the final one with
    ``final_metadata`` on top.
    """
    extra = extra_metadata or {}
    for x, coords in iterator:
        lead = np.asarray(coords["lead_time"]).reshape(-1)[-1]
        if lead > final_lead:
            break  # a model resumed at the final step has nothing left to do
        if done_lead is None or lead > done_lead:
            write(x, coords)
            metadata = {**extra, **(final_metadata or {})} if lead >= final_lead else extra
            entry = session.write(lead_time=lead, **metadata)
            bar.update(1, f"lead time {lead} {'committed' if entry is not None else 'written'}")
            if stop:
                bar.flush()  # the line of the last step before the notice that follows it
                stop_now(session, stop, f"lead time {lead}")
        elif rewrite:
            write(x, coords)
        if lead >= final_lead:
            break
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


def io_writer(io: Any, output_coords: dict[str, np.ndarray]) -> Any:
    def write(x: Any, coords: OrderedDict[str, np.ndarray]) -> None:
        x, coords = map_coords(x, coords, output_coords)
        io.write(*split_coords(x, coords))

    return write


def coords_signature(coords: dict[str, Any]) -> dict[str, Any]:
    """What identifies a coordinate system: its dimensions, their sizes, and a digest of the values.

    The sizes make an error message readable; the digest catches a change
    of values at the same size (another grid, other variables).
    """
    digest = hashlib.sha256()
    dims: dict[str, int] = {}
    for key, value in coords.items():
        array = np.asarray(value)
        if array.dtype == object:
            array = array.astype(str)  # an object array's bytes are pointers
        dims[str(key)] = int(array.size)
        digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return {"dims": dims, "digest": digest.hexdigest()[:16]}


def run_identity(name: str, time: np.ndarray, model_coords: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The facts a resumed run must share with the run that wrote the checkpoint.

    Recorded with every row under ``"workflow"``. The number of steps and of
    ensemble members are not among them: a forecast's prefix does not depend
    on its length, so a run may be resumed with more (see :func:`check_identity`).
    """
    return {"name": name, "time": [str(t) for t in time], "model": coords_signature(model_coords), **extra}


#: Entries of a run's identity that a resumed run may change.
EXTENSIBLE = ("nsteps", "nensemble")


def _describe_difference(key: str, saved: Any, now: Any) -> str:
    if key == "model" and isinstance(saved, dict) and isinstance(now, dict):
        if saved.get("dims") == now.get("dims"):
            return f"the model's coordinates have the same sizes {now.get('dims')} but other values"
        return f"the model's coordinates were {saved.get('dims')}, now {now.get('dims')}"
    return f"{key} was {saved!r}, now {now!r}"


def check_identity(session: Any, identity: dict[str, Any]) -> None:
    """Refuse to resume a row written by a different run, saying what differs.

    Compared: every entry of ``identity`` that the saved row records too,
    except those in :data:`EXTENSIBLE`. Rows written by other tools (no
    ``"workflow"`` entry) are not checked.
    """
    if not getattr(session, "exists", False):
        return
    saved = session.metadata.get("workflow")
    if not isinstance(saved, dict):
        return
    differences = [
        _describe_difference(key, saved[key], value)
        for key, value in identity.items()
        if key in saved and key not in EXTENSIBLE and saved[key] != value
    ]
    if differences:
        where = getattr(getattr(session, "checkpoint", None), "rank_path", None)
        raise ValueError(
            f"the checkpoint row {session.commit_id}{f' in {where}' if where else ''} was written by a different run: "
            f"{'; '.join(differences)}. A run may be resumed with more steps or members, not with other times, "
            "another model or other member batches. Use a new checkpoint name or path to start a different run."
        )


def completed_members(value: Any) -> list[int]:
    """The ensemble members a row records as complete.

    earth2studio records the list of member indices; restartable 0.1.0
    recorded a count of leading members. Both are read.
    """
    if value is None:
        return []
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return list(range(int(value)))
    return sorted({int(member) for member in np.asarray(value).reshape(-1)})


def format_members(members: list[int] | None) -> str:
    """Member indices in ranges: ``[0, 1, 2, 5]`` as ``0-2,5`` (``none`` when empty)."""
    if not members:
        return "none"
    runs: list[list[int]] = []
    for member in sorted(members):
        if runs and member == runs[-1][-1] + 1:
            runs[-1].append(member)
        else:
            runs.append([member])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def holds_restored_state(component: Any) -> bool:
    """Whether any checkpoint state bound among ``component``'s attributes was restored from a row.

    A component built before its checkpoint existed, or one without
    checkpoint support, holds none: it starts from its constructor's state.
    """
    return any(state.checkpoint_state_loaded for state in states_of(component))
