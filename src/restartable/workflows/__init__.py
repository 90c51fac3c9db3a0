"""Resumable workflows, keyword-compatible with ``earth2studio.run``.

Each workflow fetches the initial condition, lays out the IO arrays, rolls
the prognostic model out and records a restart boundary after every IO
write. Run again with the same checkpoint, it resumes:

- after the last completed lead time (``deterministic``, ``diagnostic``);
- at the first incomplete member batch (``ensemble``).

A model that restored its rollout state (level 2) yields the next state and
the workflow continues from there. A model that did not is rolled out again
from the initial condition, and lead times already written are not written
again. The workflow tells the two apart from the lead time the model
actually yields, never from counters alone.

Components are duck-typed on earth2studio's protocols: a prognostic has
``input_coords()``, ``output_coords(coords)`` and ``create_iterator(x,
coords)``; a diagnostic is called as ``diagnostic(x, coords)`` and has
``input_coords()``/``output_coords(coords)``; a perturbation is called as
``perturbation(x, coords) -> (x, coords)``; a data source as ``source(time,
variable) -> xarray.DataArray``; an IO backend has ``add_array(coords,
names)`` and ``write(xs, coords, names)``.

Example::

    from restartable import Checkpoint
    from restartable.workflows import deterministic

    with Checkpoint("forecast", flush_interval=4) as ckpt:
        deterministic(["2024-01-01"], 40, model, data, io, checkpoint=ckpt)

Stop signals (SIGTERM, SIGUSR1) make a workflow finish its current step,
commit and raise :class:`WorkflowPreempted` (exit status
:data:`PREEMPTED_EXIT_CODE`).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from math import ceil
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint
from ._run import (
    PREEMPTED_EXIT_CODE,
    WorkflowPreempted,
    check_plan,
    default_device,
    graceful_stop,
    io_coords,
    io_writer,
    open_session,
    progress,
    rank_and_world_size,
    rollout,
    to_device,
)
from .coords import fetch_data, lead_times, map_coords, to_time_array

__all__ = ["PREEMPTED_EXIT_CODE", "WorkflowPreempted", "deterministic", "diagnostic", "ensemble"]


def _plan(name: str, time: np.ndarray, nsteps: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "time": [str(t) for t in time], "nsteps": int(nsteps), **extra}


def _completed_lead(session: Any) -> Any:
    return session.lead_time if getattr(session, "exists", False) else None


def _prepare(time: Any, prognostic: Any, data: Any, device: Any) -> tuple[Any, Any, OrderedDict, OrderedDict, np.ndarray]:
    device = default_device(device)
    prognostic = to_device(prognostic, device)
    time = to_time_array(time)
    input_coords = prognostic.input_coords()
    x, coords = fetch_data(data, time, input_coords["variable"], input_coords["lead_time"], device)
    x, coords = map_coords(x, coords, input_coords)
    return prognostic, x, coords, input_coords, time


def deterministic(
    time: Any,
    nsteps: int,
    prognostic: Any,
    data: Any,
    io: Any,
    output_coords: dict[str, np.ndarray] = OrderedDict(),
    device: Any = None,
    verbose: bool = True,
    checkpoint: Any = None,
) -> Any:
    """Deterministic forecast of ``nsteps`` steps, resumable from its checkpoint.

    Parameters are those of ``earth2studio.run.deterministic``; ``checkpoint``
    is a session (``with Checkpoint(...) as ckpt``), a :class:`Checkpoint`
    (entered for the run) or ``None``. Returns ``io``.
    """
    with open_session(checkpoint) as session, graceful_stop() as stop:
        prognostic, x, coords, input_coords, time = _prepare(time, prognostic, data, device)
        out = prognostic.output_coords(input_coords)
        _single_rollout("deterministic", time, nsteps, session, stop, prognostic, x, coords, io, out, io_writer(io, output_coords), output_coords, verbose)
    return io


def _single_rollout(
    name: str,
    time: np.ndarray,
    nsteps: int,
    session: Any,
    stop: Any,
    prognostic: Any,
    x: Any,
    coords: OrderedDict,
    io: Any,
    layout: OrderedDict,
    write: Any,
    output_coords: dict[str, np.ndarray],
    verbose: bool,
) -> None:
    """One rollout into ``io``, resumed after the session's last completed lead time."""
    plan = _plan(name, time, nsteps)
    check_plan(session, plan)
    leads = lead_times(prognostic.output_coords(prognostic.input_coords())["lead_time"], nsteps)
    total, variables = io_coords(layout, OrderedDict(time=time), leads, output_coords)
    io.add_array(total, list(variables))
    done = _completed_lead(session)
    start = 0 if done is None else int(np.searchsorted(leads, done, side="right"))
    with progress(len(leads), name, verbose, initial=start) as bar:
        rollout(prognostic.create_iterator(x, coords), leads[-1], done, write, session, stop, bar, {"workflow": plan})
    session.flush()


def diagnostic(
    time: Any,
    nsteps: int,
    prognostic: Any,
    diagnostic: Any,
    data: Any,
    io: Any,
    output_coords: dict[str, np.ndarray] = OrderedDict(),
    device: Any = None,
    verbose: bool = True,
    checkpoint: Any = None,
) -> Any:
    """Forecast with a diagnostic model applied to every step; writes the diagnostic's outputs."""
    with open_session(checkpoint) as session, graceful_stop() as stop:
        prognostic, x, coords, input_coords, time = _prepare(time, prognostic, data, device)
        diagnostic = to_device(diagnostic, x.device)
        write = io_writer(io, output_coords)
        diag_in = diagnostic.input_coords()

        def write_diagnostic(x: Any, coords: OrderedDict) -> None:
            # The diagnostic sees the variables it asks for; lead_time is
            # taken from the prognostic step, never from the diagnostic.
            x_in, coords_in = map_coords(x, coords, OrderedDict(variable=diag_in["variable"]))
            y, coords_out = diagnostic(x_in, coords_in)
            coords_out = OrderedDict(coords_out)
            coords_out["lead_time"] = coords["lead_time"]
            write(y, coords_out)

        layout = diagnostic.output_coords(prognostic.output_coords(input_coords))
        _single_rollout("diagnostic", time, nsteps, session, stop, prognostic, x, coords, io, layout, write_diagnostic, output_coords, verbose)
    return io


def ensemble(
    time: Any,
    nsteps: int,
    nensemble: int,
    prognostic: Any,
    data: Any,
    io: Any,
    perturbation: Any,
    batch_size: int | None = None,
    output_coords: dict[str, np.ndarray] = OrderedDict(),
    device: Any = None,
    verbose: bool = True,
    checkpoint: Any = None,
) -> Any:
    """Ensemble forecast of ``nensemble`` members in batches, resumable per member batch.

    The start of each member batch is a *pinned* row: it keeps every
    component (above all the perturbation's random state) as it was before
    the batch, until the next batch starts. Resumed inside a batch, the
    workflow continues the rollout if the model restored its level-2 state
    (it then yields the next lead time); otherwise it rewinds the components
    to the pinned row, perturbs again — drawing the same noise — and reruns
    the batch without rewriting the lead times already written.

    With ``world_size > 1`` (taken from the checkpoint, else detected) member
    batches are spread over the ranks round robin: batch ``b`` (members
    ``b * batch_size`` onwards) runs on rank ``b % world_size``, which writes
    only those members to its ``io``. Every rank still draws the
    perturbation of the batches it skips, so each member gets exactly the
    noise it gets in a single-process run. Ranks are independent: each
    resumes from its own newest row.
    """
    if nensemble < 1:
        raise ValueError(f"nensemble must be at least 1, got {nensemble}")
    batch_size = nensemble if batch_size is None else min(int(batch_size), nensemble)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rank, world_size = rank_and_world_size(checkpoint)
    owner = getattr(checkpoint, "checkpoint", None)
    if getattr(owner, "multi_rank", False) and not isinstance(checkpoint, Checkpoint):
        # Entering it already made every rank resume from the common row and
        # retire newer ones; ensemble ranks are independent, and their member
        # batches pinned rows that this may have retired.
        raise ValueError(
            f"ensemble() was given an open session of a multi-rank checkpoint ({owner.path}); its ranks are "
            "independent: pass the Checkpoint itself (ensemble(..., checkpoint=Checkpoint(...))) or create it "
            "with consistent=False"
        )
    with open_session(checkpoint, independent_ranks=True) as session, graceful_stop() as stop:
        prognostic, x0, coords0, input_coords, time = _prepare(time, prognostic, data, device)
        perturbation = to_device(perturbation, x0.device)
        plan = _plan("ensemble", time, nsteps, nensemble=int(nensemble), batch_size=batch_size, world_size=world_size)
        check_plan(session, plan)
        out = prognostic.output_coords(input_coords)
        leads = lead_times(out["lead_time"], nsteps)
        leading = OrderedDict(ensemble=np.arange(nensemble), time=time)
        total, variables = io_coords(out, leading, leads, output_coords)
        io.add_array(total, list(variables))
        write = io_writer(io, output_coords)

        resumed = getattr(session, "exists", False)
        metadata = session.metadata if resumed else {}
        completed = int(metadata.get("completed_ensembles", 0))
        done = metadata.get("lead_time") if resumed else None
        batch_row = metadata.get("batch_row")
        mine = [b for b in range(ceil(nensemble / batch_size)) if b % world_size == rank]
        done_batches = sum(1 for b in mine if b * batch_size < completed)
        with progress(len(mine), "ensemble batches", verbose, initial=done_batches) as batches:
            for first in range(completed, nensemble, batch_size):
                members = np.arange(first, min(first + batch_size, nensemble))
                coords = OrderedDict(ensemble=members, **coords0)
                x = x0.unsqueeze(0).repeat(len(members), *([1] * x0.ndim))
                x, coords = map_coords(x, coords, input_coords)
                if (first // batch_size) % world_size != rank:
                    # Another rank's batch: draw its noise all the same, so that
                    # the random streams stay those of a single-process run.
                    perturbation(x, coords)
                    continue
                mid_batch = first == completed and done is not None
                if mid_batch:
                    iterator = _resume_batch(session, prognostic, perturbation, x, coords, done, batch_row)
                else:
                    entry = session.pin(completed_ensembles=int(first), lead_time=None, workflow=plan)
                    batch_row = None if entry is None else entry.commit_id
                    x, coords = perturbation(x, coords)
                    iterator = prognostic.create_iterator(x, coords)
                    done = None
                with progress(len(leads), f"members {members[0]}-{members[-1]}", verbose, leave=False) as bar:
                    rollout(iterator, leads[-1], done, write, session, stop, bar, {"completed_ensembles": int(first), "batch_row": batch_row, "workflow": plan})
                done = None
                batches.update(1)
        session.flush(completed_ensembles=int(nensemble), lead_time=None)
    return io


def _resume_batch(session: Any, prognostic: Any, perturbation: Any, x: Any, coords: OrderedDict, done: Any, batch_row: str | None) -> Any:
    """The iterator that finishes an interrupted member batch."""
    iterator = prognostic.create_iterator(x, coords)
    first = next(iterator)
    lead = np.asarray(first[1]["lead_time"]).reshape(-1)[-1]
    if lead > done:
        # The model restored its rollout state: continue, do not perturb again.
        return itertools.chain([first], iterator)
    close = getattr(iterator, "close", None)
    if callable(close):
        close()
    if batch_row is None:
        raise ValueError(
            "cannot rerun the interrupted member batch: its pinned start row is unknown "
            "(the checkpoint was written by another tool?)"
        )
    # Rerun the batch from its start: every component as it was then.
    session.rewind(batch_row)
    x, coords = perturbation(x, coords)
    return prognostic.create_iterator(x, coords)

