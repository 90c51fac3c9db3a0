"""Tensors on a CUDA device: snapshots, commits, restores and workflows on the GPU.

The whole module is skipped where ``torch.cuda.is_available()`` is false (CI
has no GPU); it runs on a machine with one. What it pins down:

- every dtype and layout of a CUDA tensor (non-contiguous, conjugate and
  negative views, 0-d, empty, ``requires_grad``) encodes to the same bytes
  as the same tensor on the CPU, whether the snapshot is a plain ``.cpu()``
  (sync commit) or a non-blocking copy into pinned buffers (async commit);
- a commit includes the results of kernels still queued when ``write()`` is
  called, and excludes the caller's in-place kernels launched right after;
- steady-state async commits neither allocate device memory nor keep it;
- restores move tensors to the checkpoint's device, either way;
- a SIGKILL during the background persist of a CUDA state, and interpreter
  exit with one pending, leave the catalog at a durable row;
- the deterministic and ensemble workflows on the GPU, stopped and resumed
  with async commits, give bitwise what an uninterrupted GPU run gives.
"""

from __future__ import annotations

import contextvars
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from restartable import Checkpoint, bind_checkpoint_state
from restartable.codec import decode, encode
from restartable.store import scan_rows, verify_row
from restartable.store.background import HostBufferPool, _pinned_empty
from restartable.store.files import ALIGN_MIN_BYTES, PAGE_BYTES, PreparedArray, direct_io_enabled
from support import tensor_bytes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

NAME = "cuda"
CHILD_TIMEOUT = 180  # a hang guard, not a timing assertion

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.complex64,
    torch.complex128,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=generator, device=device) > 0.5
    if dtype.is_complex or dtype.is_floating_point:
        wide = torch.complex128 if dtype.is_complex else torch.float64
        return (torch.randn(shape, generator=generator, device=device, dtype=wide) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=generator, device=device, dtype=torch.int64).to(dtype)


def layouts(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One CUDA tensor of ``dtype`` in every layout the codec must handle."""
    base = random_tensor((6, 10), dtype, "cuda", seed=hash(str(dtype)) % 1000)
    out = {
        "contiguous": base,
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "scalar": base[2, 3].clone(),
        "empty": base[:0],
        "large": random_tensor((1 << 19,), dtype, "cuda", seed=1),  # > 1 MiB for 2+ byte types: page-aligned path
    }
    if dtype.is_complex:
        out["conjugate"] = base.conj()
    if dtype.is_floating_point or dtype.is_complex:
        if dtype.itemsize > 1:  # float8 has no autograd kernels to speak of
            out["requires_grad"] = base.clone().requires_grad_(True)
        if dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
            out["negative"] = torch._neg_view(base)
    return out


def assert_same_tensor(actual: torch.Tensor, expected: torch.Tensor, device: str, name: str) -> None:
    assert isinstance(actual, torch.Tensor), name
    assert actual.device.type == device, f"{name}: restored on {actual.device}, wanted {device}"
    assert actual.dtype == expected.dtype and tuple(actual.shape) == tuple(expected.shape), name
    assert actual.requires_grad == expected.requires_grad, name
    assert tensor_bytes(actual) == tensor_bytes(expected), f"{name}: bytes differ"


# --------------------------------------------------------------------------- codec


SNAPSHOTS = ["view", "copy", "pinned-pool"]


@pytest.mark.parametrize("snapshot", SNAPSHOTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: str(dtype).removeprefix("torch."))
def test_cuda_tensors_of_every_dtype_and_layout_round_trip(dtype: torch.dtype, snapshot: str) -> None:
    values = layouts(dtype)
    # Small pinned blocks in use first: torch's pinned allocator then hands
    # out blocks at 512-byte boundaries, which direct I/O cannot write from.
    fragments = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for size in (100, 700, 3000, 5000, 70000)]
    pool = HostBufferPool()
    copier: Any = {"view": False, "copy": True, "pinned-pool": pool.take()}[snapshot]
    encoded = encode(values, copy=copier)
    document = json.loads(json.dumps(encoded.document, allow_nan=False))
    cpu_encoded = encode({name: tensor.cpu() for name, tensor in values.items()})
    # The bytes on disk do not depend on where the tensor lived.
    assert len(encoded.payloads) == len(cpu_encoded.payloads)
    for got, want in zip(encoded.payloads, cpu_encoded.payloads, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
    for device in ("cuda", "cpu"):
        restored = decode(document, encoded.payloads.__getitem__, device=torch.device(device))
        assert sorted(restored) == sorted(values)
        for name, tensor in values.items():
            assert_same_tensor(restored[name], tensor, device, name)
    if snapshot == "pinned-pool":
        for payload in encoded.payloads:
            # An empty tensor has no memory to pin.
            assert payload.size == 0 or torch.from_numpy(payload).is_pinned()
            if payload.nbytes >= ALIGN_MIN_BYTES and direct_io_enabled():
                # Pinned blocks are page-aligned: the persist writes them with direct I/O.
                assert PreparedArray(payload).direct, "a large pinned snapshot buffer would go through the page cache"
        copier.release()
    del fragments


def test_large_pinned_buffers_are_page_aligned_without_doubling_their_size() -> None:
    """A power-of-two buffer gets no extra page (torch's pinned allocator would double its block)."""
    fragments = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for size in (100, 700, 3000)]
    for shape, dtype in (((1 << 24,), torch.float32), ((1024, 1024), torch.bfloat16), ((3, 1 << 20), torch.float64)):
        buffer = _pinned_empty(shape, dtype)
        nbytes = buffer.numel() * buffer.element_size()
        assert buffer.is_pinned() and tuple(buffer.shape) == shape and buffer.dtype == dtype
        assert buffer.data_ptr() % PAGE_BYTES == 0, f"{shape} {dtype}: not page-aligned"
        if nbytes >= 2 << 20:
            assert buffer.untyped_storage().nbytes() == nbytes, f"{shape} {dtype}: padded though already aligned"
    del fragments


def _resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm")
def test_large_pinned_buffers_take_exactly_their_size() -> None:
    """Not from torch's pinned allocator, which would round 33 MiB up to a 64 MiB block.

    Page-locked memory is resident, so the process's resident size grows by
    what the buffer really takes.
    """
    size = 33 << 20
    # The CUDA context and the first registration cost memory of their own.
    warm = (torch.zeros(1, device="cuda"), _pinned_empty((1 << 19,), torch.float32))
    torch.cuda.synchronize()
    before = _resident_bytes()
    buffer = _pinned_empty((size // 4,), torch.float32)
    grown = _resident_bytes() - before
    assert buffer.is_pinned() and buffer.data_ptr() % PAGE_BYTES == 0
    assert size <= grown < size + (4 << 20), f"a 33 MiB pinned buffer made the process grow by {grown >> 20} MiB"
    source = torch.arange(size // 4, dtype=torch.float32, device="cuda")
    buffer.copy_(source, non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(buffer, source.cpu())
    del buffer, warm  # unregistered and unmapped with their last views


def test_snapshot_waits_for_queued_kernels_and_ignores_later_ones(tmp_path: Path) -> None:
    """The copy is ordered after the kernels that produce the values, and is done before ``write()`` returns.

    A long chain of in-place kernels is queued (never synchronised) right
    before ``write()``, and another right after it returns: the row holds
    the state after the first chain and before the second. The reference
    runs the same kernels on a second tensor, so it is bitwise the same.
    """
    n = 1 << 24  # 64 MiB of float32: a copy long enough to race with
    with Checkpoint(NAME, path=tmp_path, async_commit=True, device="cuda") as session:
        state = bind_checkpoint_state(Grid())
        state.x = torch.ones(n, device="cuda")
        reference = torch.ones(n, device="cuda")
        for step in range(1, 4):
            for tensor in (state.x, reference):
                for _ in range(200):
                    tensor.mul_(1.001).add_(step)
            session.write(lead_time=step)
            for _ in range(200):
                state.x.mul_(-3.0)  # the caller's next kernels, launched at once
            session.flush()
            row = Checkpoint(NAME, path=tmp_path, device="cpu").select(-1)
            restored = row.bind(Grid()).checkpoint_dataclass
            assert row.entry is not None and row.entry.lead_time == step
            assert torch.equal(restored.x, reference.cpu()), f"step {step}: the row does not hold the values at write()"
            state.x.copy_(reference)


@dataclass
class Grid:
    x: Any = None


@dataclass
class Mixed:
    on_gpu: Any = None
    on_cpu: Any = None
    half: Any = None
    array: Any = None
    step: int = 0


def fill_mixed(state: Any, step: int) -> None:
    state.on_gpu = random_tensor((1 << 20,), torch.float32, "cuda", seed=step)
    state.on_cpu = random_tensor((1 << 18,), torch.float64, "cpu", seed=step)
    state.half = random_tensor((512, 513), torch.bfloat16, "cuda", seed=step).t()
    state.array = np.arange(1000, dtype=np.int32) * step
    state.step = step


@pytest.mark.parametrize("async_commit", [False, True], ids=["sync", "async"])
def test_cuda_and_cpu_states_commit_identical_rows(tmp_path: Path, async_commit: bool) -> None:
    """The same values committed from the GPU and from the CPU give the same row, checksums included."""

    def commit(path: Path, device: str) -> list[Any]:
        with Checkpoint(NAME, path=path, mode="append", async_commit=async_commit, device=device) as session:
            state = bind_checkpoint_state(Mixed())
            for step in range(1, 4):
                fill_mixed(state, step)
                if device == "cpu":
                    state.on_gpu, state.half = state.on_gpu.cpu(), state.half.cpu()
                session.write(lead_time=step)
        return scan_rows(path).rows

    def comparable(row: Any) -> dict[str, Any]:
        body = dict(row.body)
        del body["commit_id"], body["saved_at"]
        return body

    on_gpu, on_cpu = commit(tmp_path / "gpu", "cuda"), commit(tmp_path / "cpu", "cpu")
    assert len(on_gpu) == len(on_cpu) == 3
    for gpu_row, cpu_row in zip(on_gpu, on_cpu, strict=True):
        assert comparable(gpu_row) == comparable(cpu_row)
        assert verify_row(gpu_row.path) == []


def test_restore_places_tensors_on_the_checkpoint_device(tmp_path: Path) -> None:
    with Checkpoint(NAME, path=tmp_path / "from-gpu", device="cuda") as session:
        fill_mixed(bind_checkpoint_state(Mixed()), 5)
        session.flush(lead_time=5)
    with Checkpoint(NAME, path=tmp_path / "from-cpu", device="cpu") as session:
        state = bind_checkpoint_state(Mixed())
        fill_mixed(state, 5)
        state.on_gpu, state.half = state.on_gpu.cpu(), state.half.cpu()
        session.flush(lead_time=5)
    expected = Mixed()
    fill_mixed(expected, 5)
    for source in ("from-gpu", "from-cpu"):
        for device in ("cpu", "cuda"):
            with Checkpoint(NAME, path=tmp_path / source, device=device) as session:
                assert session.lead_time == 5
                state = bind_checkpoint_state(Mixed())
                assert state.step == 5
                np.testing.assert_array_equal(state.array, expected.array)
                for name in ("on_gpu", "on_cpu", "half"):
                    assert_same_tensor(
                        getattr(state, name), getattr(expected, name), device, f"{source} -> {device}: {name}"
                    )


def test_steady_state_async_commits_hold_no_device_memory(tmp_path: Path) -> None:
    """Commits of a state whose shapes repeat leave device memory where it was.

    The snapshot's device temporaries (for the non-contiguous tensor) are
    freed before ``write()`` returns, and nothing of a commit stays on the
    GPU. The caching allocator frees some blocks only at its next
    allocation, so the steady state is read after a few commits.
    """
    allocated = []
    with Checkpoint(NAME, path=tmp_path, async_commit=True, device="cuda") as session:
        state = bind_checkpoint_state(Mixed())
        fill_mixed(state, 1)
        for step in range(10):
            state.on_gpu.add_(1)
            session.write(lead_time=step)
            allocated.append(torch.cuda.memory_allocated())
        session.flush()
    steady = allocated[3:]
    assert len(set(steady)) == 1, f"device memory changes from commit to commit: {allocated}"
    assert max(allocated) <= allocated[0], f"device memory grew over the commits: {allocated}"
    assert torch.cuda.memory_allocated() <= steady[-1]


# --------------------------------------------------------------------------- processes


CHILD = textwrap.dedent(
    r"""
    import json, sys
    from dataclasses import dataclass
    from typing import Any

    import torch
    from restartable import Checkpoint, bind_checkpoint_state
    from restartable.store import verify_row

    @dataclass
    class Grid:
        x: Any = None
        step: int = 0

    action, path = sys.argv[1], sys.argv[2]
    if action == "check":
        # Every row verifies and restores on the GPU with its own step's values.
        checkpoint = Checkpoint("cuda", path=path, mode="append", device="cuda")
        leads = []
        for index, entry in enumerate(checkpoint.catalog):
            assert verify_row(entry.path) == [], entry.commit_id
            state = checkpoint.select(index).bind(Grid()).checkpoint_dataclass
            assert state.x.device.type == "cuda" and state.step == entry.lead_time, entry.lead_time
            assert bool((state.x == entry.lead_time).all()), f"row {entry.lead_time} holds another step's tensor"
            leads.append(entry.lead_time)
        print(json.dumps(leads))
        sys.exit(0)

    steps, flush = int(sys.argv[3]), sys.argv[4] == "flush"
    checkpoint = Checkpoint("cuda", path=path, mode="append", async_commit=True, device="cuda")
    session = checkpoint.__enter__()
    state = bind_checkpoint_state(Grid())
    state.x = torch.zeros(1 << 24, device="cuda")  # 64 MiB: each persist takes a while
    for step in range(1, steps + 1):
        state.x.fill_(step)
        state.step = step
        session.write(lead_time=step)
        print(step, flush=True)
    if flush:
        checkpoint.__exit__(None, None, None)
    # else: leave with the last persist pending; atexit must finish it
    """
)


def restored_rows(path: Path) -> list[int]:
    """The lead times of the catalog's rows, each verified and restored on the GPU by a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "check", str(path)], capture_output=True, text=True, timeout=CHILD_TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_interpreter_exit_with_a_pending_cuda_persist_commits_the_row(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "write", str(tmp_path), "3", "no-flush"],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert restored_rows(tmp_path) == [1, 2, 3]


def test_sigkill_during_a_background_persist_of_a_cuda_state_keeps_the_last_durable_row(tmp_path: Path) -> None:
    """Killed right after ``write()`` returns (its persist in flight), again and again."""
    for kill_after in (1, 3, 5):
        path = tmp_path / f"kill-{kill_after}"
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, "write", str(path), "1000", "flush"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            for _ in range(kill_after):
                assert child.stdout.readline().strip(), "the child ended before its writes"
            os.kill(child.pid, signal.SIGKILL)
            child.wait(CHILD_TIMEOUT)
        finally:
            child.kill()
            child.wait(CHILD_TIMEOUT)
        leads = restored_rows(path)
        assert leads == list(range(1, len(leads) + 1)), "the catalog is not a prefix of the writes"
        # write(k) returns once the persist of k - 1 is durable.
        assert len(leads) >= kill_after - 1


# --------------------------------------------------------------------------- workflows on the GPU


def _fresh(func: Any) -> Any:
    return contextvars.Context().run(func)


def test_workflows_on_the_gpu_resume_bitwise_equal_with_async_commits(tmp_path: Path) -> None:
    from restartable.components import GaussianPerturbation, Lorenz96, MemoryIO, SyntheticData
    from restartable.workflows import WorkflowPreempted, deterministic, ensemble

    time, nsteps = ["2024-01-01T00:00"], 6

    class StopAt(MemoryIO):
        def __init__(self, stop_at: int | None) -> None:
            super().__init__()
            self.stop_at, self.calls = stop_at, 0

        def write(self, x: Any, coords: Any, names: Any) -> None:
            assert all(tensor.device.type == "cuda" for tensor in x)
            super().write(x, coords, names)
            self.calls += 1
            if self.calls == self.stop_at:
                signal.raise_signal(signal.SIGTERM)

    def run(workflow: str, io: Any, checkpoint: Any = None) -> Any:
        data = SyntheticData(16, 32, seed=0)
        model = Lorenz96(lat=data.lat, lon=data.lon)
        if workflow == "deterministic":
            return deterministic(time, nsteps, model, data, io, device="cuda", verbose=False, checkpoint=checkpoint)
        return ensemble(
            time,
            nsteps,
            4,
            model,
            data,
            io,
            GaussianPerturbation(0.5, seed=7),
            batch_size=2,
            device="cuda",
            verbose=False,
            checkpoint=checkpoint,
        )

    for workflow, stop_at in (("deterministic", 4), ("ensemble", 9)):
        reference = _fresh(lambda workflow=workflow: run(workflow, MemoryIO()))
        path = tmp_path / workflow
        io = StopAt(stop_at)

        def first(workflow: str = workflow, path: Path = path, io: StopAt = io) -> None:
            with Checkpoint("wf", path=path, level=2, async_commit=True, device="cuda") as session:
                with pytest.raises(WorkflowPreempted):
                    run(workflow, io, session)

        def second(workflow: str = workflow, path: Path = path, io: StopAt = io) -> None:
            io.stop_at = None
            with Checkpoint("wf", path=path, level=2, async_commit=True, device="cuda") as session:
                assert session.entry is not None, "the stopped run committed nothing"
                run(workflow, io, session)

        _fresh(first)
        assert io.calls == stop_at
        _fresh(second)
        assert sorted(io.coords) == sorted(reference.coords)
        for name in reference.coords:
            assert not np.isnan(io[name]).any(), f"{workflow}: {name} has unwritten entries"
            assert io[name].tobytes() == reference[name].tobytes(), (
                f"{workflow}: {name} differs from the uninterrupted run"
            )
