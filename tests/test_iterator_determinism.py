"""Determinism across processes: an iterator killed with SIGKILL resumes element for element.

For each configuration (an array or a directory of ``.npy`` shards, several
``num_shards``/``shard_index``, batch sizes, bit generators, sync and async
saves):

1. this process iterates 10,000 elements without interruption;
2. a writer subprocess iterates the same stream, logging every batch it
   yields (unbuffered, so a SIGKILL loses nothing already written), and
   saves either once at a random step (``at``) or every ``interval`` steps
   (``interval``: the kill may land in the middle of a save);
3. the test SIGKILLs it (after the save was reported, at a random moment in
   ``interval`` mode);
4. a fresh process restores the latest step and iterates on;
5. the writer's first ``step`` batches followed by the fresh process's
   output equal the uninterrupted 10,000 elements, element for element.

The datasets are small (hundreds of elements per shard), so 10,000 elements
cross dozens of epoch boundaries, before and after the save.
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from restartable.iterators import IteratorCheckpoint

TOTAL = 10_000
WIDTH = 3  # int64 columns per element: [i, 7 * i, -i]

COMMON = r"""
import json, os, sys, time, warnings
import numpy as np
from restartable.errors import CheckpointWarning
from restartable.iterators import PipelineCheckpoint, ShuffledArrayIterator

warnings.simplefilter("error", CheckpointWarning)  # no fallback, no cleanup: nothing may be damaged

def make(cfg):
    data = np.load(cfg["data"]) if cfg["source"] == "array" else cfg["data"]
    rng = np.random.Generator(getattr(np.random, cfg["bit_generator"])(cfg["seed"]))
    return ShuffledArrayIterator(
        data,
        batch_size=cfg["batch_size"],
        seed=rng,
        num_shards=cfg["num_shards"],
        shard_index=cfg["shard_index"],
        drop_remainder=cfg["drop_remainder"],
    )

def as_rows(batch):
    return np.asarray(batch, dtype=np.int64).reshape(-1, 3)
"""

WRITER = (
    COMMON
    + r"""
cfg = json.loads(sys.argv[1])
it = make(cfg)
ckpt = PipelineCheckpoint(cfg["ckpt"], async_checkpointing=cfg["async"])
elements = open(cfg["elements_log"], "ab", buffering=0)
sizes = open(cfg["sizes_log"], "ab", buffering=0)
step = 0
while True:
    rows = as_rows(next(it))
    step += 1
    elements.write(rows.tobytes())          # before any save that includes this batch
    sizes.write(np.int64(len(rows)).tobytes())
    if cfg["mode"] == "at":
        if step == cfg["save_at"]:
            ckpt.save_to_directory(it, step=step, keep=2, metadata={"elements": int(step)})
            ckpt.wait_until_finished()
            print("SAVED", step, flush=True)
        elif step > cfg["save_at"]:
            time.sleep(0.001)               # keep iterating (and logging) until killed
    elif step > cfg["last_save"]:
        time.sleep(0.001)                   # no more saves: keep iterating until killed
    else:
        if ckpt.save_to_step(it, step, interval=cfg["interval"], keep=2) is not None:
            if cfg["async"]:
                print("SUBMITTED", step, flush=True)
            else:
                print("SAVED", step, flush=True)
"""
)

RESTORER = (
    COMMON
    + r"""
cfg = json.loads(sys.argv[1])
it = make(cfg)
ckpt = PipelineCheckpoint(cfg["ckpt"])
step = ckpt.get_latest_step()
ckpt.restore_latest(it)
out, count = [], 0
while count < cfg["need"]:
    rows = as_rows(next(it))
    out.append(rows)
    count += len(rows)
np.save(cfg["out"], np.concatenate(out))
print(json.dumps({"step": step, "epoch": it.epoch}), flush=True)
"""
)

CONFIGS = {
    # id: source, elements, batch, shards, index, drop, bit generator, async, mode
    "array-1shard-batch7": dict(
        source="array",
        n=1237,
        batch_size=7,
        num_shards=1,
        shard_index=0,
        drop_remainder=False,
        bit_generator="PCG64",
        async_=False,
        mode="at",
    ),
    "array-3shards-index2-single": dict(
        source="array",
        n=1237,
        batch_size=None,
        num_shards=3,
        shard_index=2,
        drop_remainder=False,
        bit_generator="PCG64",
        async_=False,
        mode="at",
    ),
    "npy-4shards-index1-batch16-drop": dict(
        source="npy",
        n=1000,
        batch_size=16,
        num_shards=4,
        shard_index=1,
        drop_remainder=True,
        bit_generator="MT19937",
        async_=True,
        mode="at",
    ),
    "npy-2shards-index0-batch5-interval": dict(
        source="npy",
        n=1000,
        batch_size=5,
        num_shards=2,
        shard_index=0,
        drop_remainder=False,
        bit_generator="Philox",
        async_=False,
        mode="interval",
    ),
    "array-2shards-index1-batch8-async-interval": dict(
        source="array",
        n=811,
        batch_size=8,
        num_shards=2,
        shard_index=1,
        drop_remainder=False,
        bit_generator="SFC64",
        async_=True,
        mode="interval",
    ),
}


def make_data(root: Path, cfg: dict[str, Any]) -> str:
    i = np.arange(cfg["n"], dtype=np.int64)
    data = np.stack([i, 7 * i, -i], axis=1)
    if cfg["source"] == "array":
        path = root / "data.npy"
        np.save(path, data)
        return str(path)
    shards = root / "shards"
    shards.mkdir()
    cuts = [0, 97, 350, 351, 700, cfg["n"]]  # uneven, one shard of a single element
    for k, (lo, hi) in enumerate(itertools.pairwise(cuts)):
        np.save(shards / f"part-{k:03d}.npy", data[lo:hi])
    return str(shards)


def read_line(proc: subprocess.Popen, deadline: float) -> str:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            return line.strip()
        if proc.poll() is not None:
            raise AssertionError(f"writer exited with {proc.returncode}:\n{proc.stderr.read() if proc.stderr else ''}")
    raise AssertionError("writer did not report a save in time")


def run(code: str, cfg: dict[str, Any], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sigkilled_iterator_resumes_element_for_element(tmp_path: Path, name: str) -> None:
    spec = CONFIGS[name]
    rnd = random.Random(name)  # a different, reproducible "random" step per configuration
    cfg: dict[str, Any] = {
        "source": spec["source"],
        "data": make_data(tmp_path, spec),
        "batch_size": spec["batch_size"],
        "num_shards": spec["num_shards"],
        "shard_index": spec["shard_index"],
        "drop_remainder": spec["drop_remainder"],
        "bit_generator": spec["bit_generator"],
        "seed": 20240601,
        "async": spec["async_"],
        "mode": spec["mode"],
        "ckpt": str(tmp_path / "ckpt"),
        "elements_log": str(tmp_path / "elements.bin"),
        "sizes_log": str(tmp_path / "sizes.bin"),
    }
    batch = spec["batch_size"] or 1
    steps_total = TOTAL // batch
    cfg["save_at"] = rnd.randint(1, steps_total * 9 // 10)
    cfg["interval"] = rnd.choice([17, 37, 61])
    cfg["last_save"] = steps_total * 9 // 10  # the saved step leaves elements to resume
    saves_before_kill = rnd.randint(2, cfg["last_save"] // cfg["interval"])

    # 1. Uninterrupted, in this process, with the same construction code.
    namespace: dict[str, Any] = {}
    exec(COMMON, namespace)
    it = namespace["make"](cfg)
    chunks, count = [], 0
    while count < TOTAL:
        rows = namespace["as_rows"](next(it))
        chunks.append(rows)
        count += len(rows)
    expected = np.concatenate(chunks)[:TOTAL]
    epochs_total = it.epoch
    assert epochs_total >= 5, "the stream must cross many epoch boundaries"

    # 2-3. The writer, killed with SIGKILL.
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        reported = []
        wanted = 1 if cfg["mode"] == "at" else saves_before_kill
        while len(reported) < wanted:
            _word, step = read_line(proc, deadline).split()
            reported.append(int(step))
        if cfg["mode"] == "interval":
            time.sleep(rnd.uniform(0, 0.02))  # anywhere: iterating, encoding, fsyncing, retiring
        else:
            time.sleep(0.05)  # the writer iterates past the save
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    sizes = np.fromfile(cfg["sizes_log"], dtype=np.int64)
    logged = np.fromfile(cfg["elements_log"], dtype=np.int64)
    logged = logged[: (len(logged) // WIDTH) * WIDTH].reshape(-1, WIDTH)

    # 4. A fresh process restores the latest step and continues.
    cfg["need"] = TOTAL
    cfg["out"] = str(tmp_path / "continued.npy")
    result = run(RESTORER, cfg)
    assert result.returncode == 0, result.stderr
    restored = json.loads(result.stdout)
    step = restored["step"]
    if cfg["mode"] == "at":
        assert step == cfg["save_at"]
    elif not cfg["async"]:
        # Every save reported as done is durable; the kill may have caught a later one.
        assert step >= reported[-1]
    else:
        # Submitted is not durable: the one before it is.
        assert step >= reported[-2]
    assert step <= len(sizes), "a save can only include batches already logged"

    # 5. The writer's first `step` batches + the continuation == uninterrupted.
    prefix = logged[: int(sizes[:step].sum())]
    continued = np.load(cfg["out"])
    combined = np.concatenate([prefix, continued])
    assert len(combined) >= TOTAL
    mismatch = np.flatnonzero((combined[:TOTAL] != expected).any(axis=1))
    assert mismatch.size == 0, (
        f"{name}: first difference at element {mismatch[:1]} (saved at step {step}, prefix of {len(prefix)} elements)"
    )
    assert len(prefix) < TOTAL, "the save must leave elements for the resumed process"
    assert len(logged) >= len(prefix)
    # The directory the writer left behind verifies completely.
    assert subprocess.run([sys.executable, "-m", "restartable.cli", "verify", "-q", cfg["ckpt"]]).returncode == 0
    assert IteratorCheckpoint(cfg["ckpt"]).get_latest_step() == step


def test_restore_into_a_fresh_process_for_every_shard(tmp_path: Path) -> None:
    """Every rank saves its own directory at the same step; each resumes its own share, together all of it."""
    n, shards, steps = 503, 4, 157
    i = np.arange(n, dtype=np.int64)
    np.save(tmp_path / "data.npy", np.stack([i, 7 * i, -i], axis=1))
    expected, continued = [], []
    namespace: dict[str, Any] = {}
    exec(COMMON, namespace)
    for rank in range(shards):
        cfg = {
            "source": "array",
            "data": str(tmp_path / "data.npy"),
            "batch_size": 4,
            "num_shards": shards,
            "shard_index": rank,
            "drop_remainder": False,
            "bit_generator": "PCG64",
            "seed": 5,
            "ckpt": str(tmp_path / f"rank_{rank}"),
            "need": 400,
            "out": str(tmp_path / f"out_{rank}.npy"),
        }
        it = namespace["make"](cfg)
        for _ in range(steps):
            next(it)
        IteratorCheckpoint(cfg["ckpt"]).save_to_directory(it, step=steps)
        rows = [
            namespace["as_rows"](next(it)) for _ in range(120)
        ]  # at least 400 elements (short batches at epoch ends)
        expected.append(np.concatenate(rows)[:400])
        result = run(RESTORER, cfg)
        assert result.returncode == 0, result.stderr
        continued.append(np.load(cfg["out"])[:400])
    for rank in range(shards):
        assert np.array_equal(continued[rank], expected[rank]), rank
