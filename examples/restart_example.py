"""A job that is killed mid-run and resumed, giving exactly the uninterrupted result.

The "job" integrates a small chaotic system (Lorenz-96) for 40 steps and
checkpoints its state after every step. A first process is killed with
SIGKILL at step 17 — no chance to clean up, as when a node dies. A second
run resumes from the last committed row and finishes. The final state is
compared bit for bit with a run that was never interrupted.

Run:  python examples/restart_example.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

from restartable import Checkpoint, bind_checkpoint_state

NSTEPS = 40
KILL_AT = 17


@dataclass
class Lorenz96State:
    step: int = 0
    x: np.ndarray = field(default_factory=lambda: 8.0 + 0.01 * np.arange(40, dtype=np.float64))


def tendency(x: np.ndarray, forcing: float = 8.0) -> np.ndarray:
    return (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + forcing


def advance(x: np.ndarray, dt: float = 0.01) -> np.ndarray:
    k1 = tendency(x)
    k2 = tendency(x + 0.5 * dt * k1)
    k3 = tendency(x + 0.5 * dt * k2)
    k4 = tendency(x + dt * k3)
    return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def run(store: str, kill_at: int | None = None) -> np.ndarray:
    """Run (or resume) the job; returns the final state."""
    with Checkpoint("lorenz96", path=store, mode="append", history_size=3) as ckpt:
        state = bind_checkpoint_state(Lorenz96State())
        if state.checkpoint_state_loaded:
            print(f"  resumed from row {ckpt.commit_id} at step {state.step}")
        while state.step < NSTEPS:
            state.x = advance(state.x)
            state.step += 1
            ckpt.write(lead_time=state.step)
            if state.step == kill_at:
                print(f"  step {state.step}: killing this process with SIGKILL", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        return state.x


def main() -> int:
    reference = Lorenz96State().x
    for _ in range(NSTEPS):
        reference = advance(reference)

    store = tempfile.mkdtemp(prefix="restartable-example-")
    print(f"checkpoint store: {store}")
    print("run 1 (will be killed):")
    child = subprocess.run([sys.executable, __file__, "--child", store], check=False)
    print(f"  process ended with signal {-child.returncode}")
    print("catalog after the crash:")
    print("  " + str(Checkpoint("lorenz96", path=store, mode="append", history_size=3)).replace("\n", "\n  "))
    print("run 2 (resume):")
    final = run(store)
    same = np.array_equal(final, reference) and final.tobytes() == reference.tobytes()
    print(f"resumed result equals the uninterrupted run bit for bit: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        run(sys.argv[2], kill_at=KILL_AT)
        sys.exit(0)
    sys.exit(main())
