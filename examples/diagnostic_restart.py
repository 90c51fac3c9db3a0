"""A diagnostic forecast killed with SIGKILL mid-rollout, resumed, and checked bit for bit.

The ``diagnostic`` workflow rolls the reference Lorenz-96 model
(``restartable.components.Lorenz96``: a leapfrog scheme whose previous time
level is hidden state) out from a synthetic initial condition of the two
10 m wind components, applies the :class:`~restartable.components.WindSpeed`
diagnostic (``ws10m = sqrt(u10m**2 + v10m**2)``) to every step and writes
only the diagnostic's output to a Zarr v3 store. The wind components
themselves are never written, so nothing in IO could restart the model: the
checkpoint alone carries the rollout.

1. reference: the forecast runs uninterrupted, with no checkpoint, into
   ``reference.zarr``;
2. crash: a child process runs the same forecast into ``restarted.zarr``
   with a :class:`~restartable.Checkpoint` and kills itself with SIGKILL right
   after the IO write of one lead time, before that step's checkpoint commit
   (the worst moment: IO is ahead of the checkpoint) -- no clean-up, as when
   a node dies;
3. resume: a second child process runs the very same command again. With
   ``--level 2`` (the default) the model restores its two time levels and
   continues from the next lead time; with ``--level 0``/``1`` it recomputes
   the rollout from the initial condition and the workflow skips the lead
   times already written;
4. the two stores are compared array by array, bit for bit.

Exit status 0 when every array is bitwise identical, 1 otherwise.

Run::

    python examples/diagnostic_restart.py
    python examples/diagnostic_restart.py --level 1 --flush-interval 3 --kill-after 9
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _harness  # the kill-and-resume harness shared by the examples, next to this script
from _harness import START, KillingZarrIO, hours, say

from restartable import Checkpoint
from restartable.components import Lorenz96, SyntheticData, WindSpeed
from restartable.workflows import diagnostic

NAME = "diagnostic-example"


def forecast(
    args: argparse.Namespace, store: Path, checkpoint_dir: Path | None = None, kill_after: int | None = None
) -> None:
    """Run (or resume, when ``checkpoint_dir`` holds a row) the forecast into ``store``."""
    data = SyntheticData(nlat=args.nlat, nlon=args.nlon, seed=args.seed)
    io = KillingZarrIO(store, kill_after)
    if checkpoint_dir is None:
        model = Lorenz96(("u10m", "v10m"), lat=data.lat, lon=data.lon)
        diagnostic(START, args.nsteps, model, WindSpeed(), data, io, device="cpu", verbose=args.progress)
        return
    checkpoint = Checkpoint(
        NAME, path=checkpoint_dir, mode=args.mode, flush_interval=args.flush_interval, level=args.level
    )
    with checkpoint as session:
        # Restart-aware components are constructed inside the session, so that
        # their bound state is restored before they use it. WindSpeed is
        # stateless and binds nothing.
        model = Lorenz96(("u10m", "v10m"), lat=data.lat, lon=data.lon)
        if session.exists:
            restored = (
                f"model state restored at lead time {hours(model.checkpoint.lead_time)}: continues the rollout"
                if model.checkpoint.x_curr is not None
                else "no model state saved at this level: recomputes the rollout, skips what was written"
            )
            say(f"resuming after lead time {hours(session.lead_time)}; {restored}")
        diagnostic(
            START, args.nsteps, model, WindSpeed(), data, io, device="cpu", verbose=args.progress, checkpoint=session
        )
        say(f"wrote {io.writes} lead time(s), committed up to lead time {hours(session.lead_time)}")


def main(argv: list[str] | None = None) -> int:
    args = _harness.parse(__doc__, argv)
    headline = f"diagnostic forecast: wind speed of Lorenz-96 winds on {args.nlat}x{args.nlon}, {args.nsteps} steps"
    return _harness.main(__file__, argv, args, forecast, name=NAME, headline=headline)


if __name__ == "__main__":
    sys.exit(main())
