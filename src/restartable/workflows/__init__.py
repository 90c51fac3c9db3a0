"""Resumable workflows, keyword-compatible with ``earth2studio.run``.

Each workflow fetches the initial condition, lays out the IO arrays, rolls
the prognostic model out and records a restart boundary after every IO
write. Run again with the same checkpoint, it resumes:

- after the last completed lead time (``deterministic``, ``diagnostic``);
- at the first incomplete member batch (``ensemble``).

A model that restored its rollout state (level 2) yields the next state and
the workflow continues from there. A model that did not is rolled out again
from the initial condition, and lead times already written are not written
again (``rewrite=True`` writes them again, as earth2studio does). The
workflow tells the two apart from the lead time the model actually yields,
never from counters alone.

A run may be resumed with more steps (and an ensemble with more members):
the forecast's prefix does not depend on its length. What identifies a run
(its times, the model's coordinates, the member batches) is recorded with
every row and checked on resume, with an error that says what differs.

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
from typing import Any

import numpy as np

from .._extras import require
from ..catalog import Checkpoint
from ._run import (
    PREEMPTED_EXIT_CODE,
    WorkflowPreempted,
    check_identity,
    completed_members,
    default_device,
    format_members,
    graceful_stop,
    holds_restored_state,
    io_coords,
    io_writer,
    open_session,
    progress,
    rank_and_world_size,
    rollout,
    run_identity,
    to_device,
)
from .coords import fetch_data, lead_times, map_coords, to_time_array

# Checked at import, before any run starts: every workflow moves torch
# tensors and reads its data source's xarray.DataArray.
require("torch", "xarray", extra="workflows", feature="restartable.workflows")

__all__ = ["PREEMPTED_EXIT_CODE", "WorkflowPreempted", "deterministic", "diagnostic", "ensemble"]


def _prepare(
    time: Any, prognostic: Any, data: Any, device: Any
) -> tuple[Any, Any, OrderedDict[str, np.ndarray], OrderedDict[str, np.ndarray], np.ndarray]:
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
    output_coords: dict[str, np.ndarray] | None = None,
    device: Any = None,
    verbose: bool = True,
    checkpoint: Any = None,
    *,
    rewrite: bool = False,
) -> Any:
    """Deterministic forecast of ``nsteps`` steps, resumable from its checkpoint.

    Parameters are those of ``earth2studio.run.deterministic``; ``checkpoint``
    is a session (``with Checkpoint(...) as ckpt``), a :class:`Checkpoint`
    (entered for the run) or ``None``. ``rewrite`` writes lead times that a
    resumed model recomputes (it did not restore its rollout state) to
    ``io`` again. Returns ``io``.
    """
    if output_coords is None:
        output_coords = OrderedDict()
    with open_session(checkpoint) as session, graceful_stop() as stop:
        prognostic, x, coords, input_coords, time = _prepare(time, prognostic, data, device)
        out = prognostic.output_coords(input_coords)
        _single_rollout(
            "deterministic",
            time,
            nsteps,
            session,
            stop,
            prognostic,
            x,
            coords,
            io,
            out,
            io_writer(io, output_coords),
            output_coords,
            verbose,
            rewrite,
        )
    return io


def _single_rollout(
    name: str,
    time: np.ndarray,
    nsteps: int,
    session: Any,
    stop: Any,
    prognostic: Any,
    x: Any,
    coords: OrderedDict[str, np.ndarray],
    io: Any,
    layout: OrderedDict[str, np.ndarray],
    write: Any,
    output_coords: dict[str, np.ndarray],
    verbose: bool,
    rewrite: bool,
) -> None:
    """One rollout into ``io``, resumed after the session's last completed lead time."""
    model_coords = prognostic.output_coords(prognostic.input_coords())
    identity = run_identity(name, time, model_coords, nsteps=int(nsteps))
    check_identity(session, identity)
    leads = lead_times(model_coords["lead_time"], nsteps)
    total, variables = io_coords(layout, OrderedDict(time=time), leads, output_coords)
    io.add_array(total, list(variables))
    done = session.lead_time if getattr(session, "exists", False) else None
    start = 0 if done is None else int(np.searchsorted(leads, done, side="right"))
    with progress(len(leads), name, verbose, "lead times", initial=start) as bar:
        if start < len(leads):
            rollout(
                prognostic.create_iterator(x, coords),
                leads[-1],
                done,
                write,
                session,
                stop,
                bar,
                {"workflow": identity},
                rewrite,
            )
    session.flush()


def diagnostic(
    time: Any,
    nsteps: int,
    prognostic: Any,
    diagnostic: Any,
    data: Any,
    io: Any,
    output_coords: dict[str, np.ndarray] | None = None,
    device: Any = None,
    verbose: bool = True,
    checkpoint: Any = None,
    *,
    rewrite: bool = False,
) -> Any:
    """Forecast with a diagnostic model applied to every step; writes the diagnostic's outputs.

    As in earth2studio, the diagnostic sees each step mapped to its
    ``input_coords()``, and the IO arrays have the prognostic's coordinates
    with those the diagnostic's ``output_coords`` also names replaced by
    the diagnostic's (except free dimensions, given as empty arrays). The checkpoint records the prognostic's lead time,
    whatever the diagnostic returns.
    """
    if output_coords is None:
        output_coords = OrderedDict()
    with open_session(checkpoint) as session, graceful_stop() as stop:
        prognostic, x, coords, input_coords, time = _prepare(time, prognostic, data, device)
        diagnostic = to_device(diagnostic, x.device)
        write = io_writer(io, output_coords)
        diagnostic_in = diagnostic.input_coords()

        def write_diagnostic(x: Any, coords: OrderedDict[str, np.ndarray]) -> None:
            x, coords = map_coords(x, coords, diagnostic_in)
            write(*diagnostic(x, coords))

        layout = OrderedDict(prognostic.output_coords(input_coords))
        diagnostic_out = diagnostic.output_coords(diagnostic_in)
        for key in layout:
            # A free dimension of the diagnostic (an empty array) keeps the
            # prognostic's values.
            if key in diagnostic_out and np.asarray(diagnostic_out[key]).size:
                layout[key] = diagnostic_out[key]
        _single_rollout(
            "diagnostic",
            time,
            nsteps,
            session,
            stop,
            prognostic,
            x,
            coords,
            io,
            layout,
            write_diagnostic,
            output_coords,
            verbose,
            rewrite,
        )
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
    output_coords: dict[str, np.ndarray] | None = None,
    device: Any = None,
    verbose: bool = True,
    checkpoint: Any = None,
    *,
    rewrite: bool = False,
) -> Any:
    """Ensemble forecast of ``nensemble`` members in batches, resumable per member batch.

    Each row records the members completed so far (``completed_ensembles``,
    a list of member indices as in earth2studio). The start of each member
    batch is a *pinned* row: it keeps every component (above all the
    perturbation's random state) as it was before the batch, until the next
    batch starts. Resumed inside a batch, the workflow continues the rollout
    if the model restored its level-2 state (it then yields the next lead
    time); otherwise it rewinds the components to the pinned row, perturbs
    again — drawing the same noise — and reruns the batch without rewriting
    the lead times already written (unless ``rewrite``).

    A perturbation whose state was not restored (built before its
    checkpoint existed, or without checkpoint support) draws the noise of
    every batch before the one resumed again, so each member still gets the
    noise of an uninterrupted run, provided it is seeded.

    A run may be resumed with more members: they are added after the
    completed ones. More steps are accepted only while no member batch is
    complete (completed members would miss the new lead times).

    With ``world_size > 1`` (taken from the checkpoint, else detected) member
    batches are spread over the ranks round robin: batch ``b`` (members
    ``b * batch_size`` onwards) runs on rank ``b % world_size``, which writes
    only those members to its ``io``. Every rank still draws the
    perturbation of the batches it skips, so each member gets exactly the
    noise it gets in a single-process run. Ranks are independent: each
    resumes from its own newest row.
    """
    if output_coords is None:
        output_coords = OrderedDict()
    if nensemble < 1:
        raise ValueError(f"nensemble must be at least 1, got {nensemble}")
    batch_size = nensemble if batch_size is None else min(int(batch_size), nensemble)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rank, world_size = rank_and_world_size(checkpoint)
    owner = getattr(checkpoint, "checkpoint", None)
    if owner is not None and getattr(owner, "multi_rank", False) and not isinstance(checkpoint, Checkpoint):
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
        out = prognostic.output_coords(input_coords)
        identity = run_identity(
            "ensemble",
            time,
            out,
            batch_size=batch_size,
            world_size=world_size,
            nsteps=int(nsteps),
            nensemble=int(nensemble),
        )
        check_identity(session, identity)
        resumed = getattr(session, "exists", False)
        metadata = session.metadata if resumed else {}
        completed = set(completed_members(metadata.get("completed_ensembles")))
        _check_extension(session, metadata, completed, nsteps)
        leads = lead_times(out["lead_time"], nsteps)
        leading = OrderedDict(ensemble=np.arange(nensemble), time=time)
        total, variables = io_coords(out, leading, leads, output_coords)
        io.add_array(total, list(variables))
        write = io_writer(io, output_coords)

        done = metadata.get("lead_time") if resumed else None
        batch_row = metadata.get("batch_row")
        # Decided before any pin can clear the flags: was the random state
        # restored, or must the noise of earlier batches be drawn again?
        restored = resumed and holds_restored_state(perturbation)
        starts = list(range(0, nensemble, batch_size))
        mine = [first for b, first in enumerate(starts) if b % world_size == rank]
        todo = [first for first in mine if not completed.issuperset(range(first, min(first + batch_size, nensemble)))]
        if todo and done is not None and done >= leads[-1] and isinstance(metadata.get("completed_ensembles"), int):
            # A 0.1.0 row counted a batch complete only at the next batch's
            # start: its final lead time says it is.
            completed.update(range(todo[0], min(todo[0] + batch_size, nensemble)))
            todo.pop(0)
        resume_at = todo[0] if todo else nensemble
        drawn = _drawn_before(restored, done, leads[-1], completed, resume_at, batch_size)
        name = "ensemble" if world_size == 1 else f"ensemble rank {rank}"
        with progress(len(mine), name, verbose, "member batches", initial=len(mine) - len(todo)) as batches:
            for first in starts if todo else ():
                members = np.arange(first, min(first + batch_size, nensemble))
                coords = OrderedDict(ensemble=members, **coords0)
                x = x0.unsqueeze(0).repeat(len(members), *([1] * x0.ndim))
                x, coords = map_coords(x, coords, input_coords)
                if first not in todo:
                    # Another rank's batch, or one completed before: its noise
                    # is drawn all the same where the restored random state
                    # does not include it, so that the random streams stay
                    # those of a single uninterrupted process.
                    if first >= drawn:
                        perturbation(x, coords)
                    continue
                mid_batch = first == resume_at and done is not None and done < leads[-1]
                if mid_batch:
                    iterator = _resume_batch(
                        session, prognostic, perturbation, x, coords, done, batch_row, first >= drawn
                    )
                else:
                    entry = session.pin(completed_ensembles=sorted(completed), lead_time=None, workflow=identity)
                    batch_row = None if entry is None else entry.commit_id
                    session.start_fresh(prognostic)  # a new rollout, not the row's
                    x, coords = perturbation(x, coords)
                    iterator = prognostic.create_iterator(x, coords)
                    done = None
                finished = sorted(completed.union(int(m) for m in members))
                step_metadata = {"completed_ensembles": sorted(completed), "batch_row": batch_row, "workflow": identity}
                span = f"members {members[0]}-{members[-1]}" if len(members) > 1 else f"member {members[0]}"
                written = 0 if done is None else int(np.searchsorted(leads, done, side="right"))
                with progress(len(leads), f"{name} {span}", verbose, "lead times", initial=written, leave=False) as bar:
                    rollout(
                        iterator,
                        leads[-1],
                        done,
                        write,
                        session,
                        stop,
                        bar,
                        step_metadata,
                        rewrite,
                        {"completed_ensembles": finished},
                    )
                completed.update(finished)
                done = None
                batches.update(1, f"{span} complete")
        session.flush()
    return io


def _drawn_before(
    restored: bool, done: Any, final_lead: Any, completed: set[int], resume_at: int, batch_size: int
) -> int:
    """The first member whose noise the restored random state does not include yet.

    A row holds the perturbation's state as the batch that wrote it left
    it: before its draw at the batch's pinned start (lead time ``None``),
    after it inside the batch and at its end. Without a restored state
    nothing is drawn yet.
    """
    if not restored:
        return 0
    if done is None:
        return resume_at
    if done < final_lead:
        return resume_at + batch_size
    return (max(completed) // batch_size + 1) * batch_size if completed else 0


def _check_extension(session: Any, metadata: dict[str, Any], completed: set[int], nsteps: int) -> None:
    saved = metadata.get("workflow")
    saved_steps = saved.get("nsteps") if isinstance(saved, dict) else None
    if completed and saved_steps is not None and saved_steps != nsteps:
        raise ValueError(
            f"the checkpoint row {session.commit_id} records members {format_members(sorted(completed))} "
            "completed with "
            f"nsteps={saved_steps}; this run asks for nsteps={nsteps}, which those members would not have. "
            "Resume with the same nsteps (more members may be added), or use a new checkpoint to run longer."
        )


def _resume_batch(
    session: Any,
    prognostic: Any,
    perturbation: Any,
    x: Any,
    coords: OrderedDict[str, np.ndarray],
    done: Any,
    batch_row: str | None,
    replay: bool,
) -> Any:
    """The iterator that finishes an interrupted member batch.

    ``replay``: the random state does not include this batch's draw yet.
    """
    iterator = prognostic.create_iterator(x, coords)
    first = next(iterator)
    lead = np.asarray(first[1]["lead_time"]).reshape(-1)[-1]
    if lead > done:
        # The model restored its rollout state: continue, do not perturb
        # again; a random state that was not restored still takes this
        # batch's draw, for the batches after it.
        if replay:
            perturbation(x, coords)
        return itertools.chain([first], iterator)
    close = getattr(iterator, "close", None)
    if callable(close):
        close()
    if batch_row is not None:
        # Rerun the batch from its start: every component as it was then.
        session.rewind(batch_row)
    # Without a pinned row (written by another tool), the batch is rerun
    # from the components as restored, as earth2studio does.
    x, coords = perturbation(x, coords)
    return prognostic.create_iterator(x, coords)
