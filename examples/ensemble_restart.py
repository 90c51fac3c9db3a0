"""An ensemble forecast killed with SIGKILL inside a member batch, resumed, and checked bit for bit.

The ``ensemble`` workflow perturbs a synthetic initial condition with
:class:`~restartable.components.GaussianPerturbation` (noise from a seeded
``torch.Generator`` whose state is checkpointed) and rolls the reference
Lorenz-96 model (``restartable.components.Lorenz96``: a leapfrog scheme with
hidden state) out for ``--nensemble`` members in batches of
``--batch-size``, writing every member and lead time to a Zarr v3 store.

1. reference: the forecast runs uninterrupted, with no checkpoint, into
   ``reference.zarr``;
2. crash: a child process runs the same forecast into ``restarted.zarr``
   with a :class:`~restartable.Checkpoint` and kills itself with SIGKILL right
   after one IO write, before that step's checkpoint commit -- by default in
   the middle of the second member batch;
3. resume: a second child process runs the very same command again. The
   workflow resumes at the first incomplete member batch. With ``--level 2``
   (the default) the model restores its rollout state and continues; with
   ``--level 1`` the workflow rewinds every component to the pinned row at
   the start of the batch (so the perturbation draws the same noise again),
   reruns the batch and skips the lead times already written;
4. the two stores are compared array by array, bit for bit: member k after
   the restart equals member k of the uninterrupted run.

``--level 0`` saves no component state: the perturbation's random state is
not restored, so the workflow draws the noise of the batches before the
resumed one again from the seed, and reruns the batch from its start; the
comparison still holds.

Exit status 0 when every array is bitwise identical, 1 otherwise.

Run::

    python examples/ensemble_restart.py
    python examples/ensemble_restart.py --level 1 --flush-interval 4 --kill-after 30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _harness  # the kill-and-resume harness shared by the examples, next to this script
from _harness import START, KillingZarrIO, hours, say, span

from restartable import Checkpoint
from restartable.components import GaussianPerturbation, Lorenz96, SyntheticData
from restartable.workflows import ensemble

NAME = "ensemble-example"


def forecast(
    args: argparse.Namespace, store: Path, checkpoint_dir: Path | None = None, kill_after: int | None = None
) -> None:
    """Run (or resume, when ``checkpoint_dir`` holds a row) the forecast into ``store``."""
    data = SyntheticData(nlat=args.nlat, nlon=args.nlon, seed=args.seed)
    io = KillingZarrIO(store, kill_after)
    if checkpoint_dir is None:
        model = Lorenz96(lat=data.lat, lon=data.lon)
        noise = GaussianPerturbation(std=args.std, seed=args.seed)
        ensemble(
            START,
            args.nsteps,
            args.nensemble,
            model,
            data,
            io,
            noise,
            batch_size=args.batch_size,
            device="cpu",
            verbose=args.progress,
        )
        return
    checkpoint = Checkpoint(
        NAME, path=checkpoint_dir, mode=args.mode, flush_interval=args.flush_interval, level=args.level
    )
    with checkpoint as session:
        # Restart-aware components are constructed inside the session, so that
        # their bound state is restored before they use it.
        model = Lorenz96(lat=data.lat, lon=data.lon)
        noise = GaussianPerturbation(std=args.std, seed=args.seed)
        if session.exists:
            done = len(session.metadata.get("completed_ensembles") or [])  # the completed members
            state = model.checkpoint
            if session.lead_time is None:
                where = "the next batch starts from its pinned row"
            elif state.x_curr is not None and "ensemble" in state.batch_coords:
                where = (
                    f"model state of {span(state.batch_coords['ensemble'])} "
                    f"restored at lead time {hours(state.lead_time)}: continues"
                )
            elif args.level == 0:
                where = (
                    "level 0, no component state: the batch is rerun, "
                    "the noise of the batches before it drawn again from the seed"
                )
            else:
                where = "no model state at this level: the batch is rerun from its pinned start row"
            if session.lead_time is not None:
                where = f"next batch committed up to lead time {hours(session.lead_time)}; {where}"
            say(f"resuming: {done} member(s) complete, {where}")
        ensemble(START, args.nsteps, args.nensemble, model, data, io, noise, batch_size=args.batch_size,
                 device="cpu", verbose=args.progress, checkpoint=session)  # fmt: skip
        say(f"made {io.writes} IO write(s) (one per member batch and lead time)")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nensemble", type=int, default=6, help="ensemble members (default 6)")
    parser.add_argument("--batch-size", type=int, default=2, help="members per batch (default 2)")
    _harness.add_forecast_options(parser, nsteps=12, seed_help="seed of the initial condition and of the perturbation")
    parser.add_argument("--std", type=float, default=0.5, help="standard deviation of the perturbation (default 0.5)")
    _harness.add_restart_options(parser)
    args = parser.parse_args(argv)
    if args.nensemble < 1 or not 1 <= args.batch_size <= args.nensemble:
        parser.error("need --nensemble >= 1 and 1 <= --batch-size <= --nensemble")
    writes = -(-args.nensemble // args.batch_size) * (args.nsteps + 1)  # batches x lead times
    return _harness.check_kill_after(parser, args, writes, f"the forecast makes {writes} IO writes")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    headline = (f"ensemble forecast: {args.nensemble} members in batches of {args.batch_size}, Lorenz-96 on "
                f"{args.nlat}x{args.nlon}, {args.nsteps} steps")  # fmt: skip
    note = "note: level 0 saves no component state; a member batch rerun after the restart draws other noise"
    return _harness.main(
        __file__, argv, args, forecast, name=NAME, headline=headline, note=note if args.level == 0 else None
    )


if __name__ == "__main__":
    sys.exit(main())
