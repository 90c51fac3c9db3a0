"""Arguments are checked where they are given (issue 20, "Arguments checked where they are given").

A device the process cannot use is refused by ``Checkpoint(...)``, with a
message naming the value, before anything is created; a device that fails
at restore is never reported as damage, so a good row is not deleted for
it; ``mode="overwrite"`` with a history is warned about (earth2studio
accepts it, so it is not refused). What metadata keeps is tested in
``tests/test_metadata_values.py``.
"""

from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import run_python
from restartable import (
    Checkpoint,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointWarning,
    bind_checkpoint_state,
    codec,
)
from restartable.earth2studio import checkpoint as e2c
from restartable.store import verify_row

NAME = "args"
ACCEPTED = "use 'cpu', 'cuda', 'cuda:<index>', 'meta', another torch device available here, or a torch.device"


@dataclass
class TensorState:
    x: torch.Tensor = field(default_factory=lambda: torch.zeros(3))


def _write_row(path: Path) -> torch.Tensor:
    """One committed row holding a tensor state; the tensor it holds."""
    values = torch.arange(6, dtype=torch.float32) * 0.5
    with Checkpoint(NAME, path=path) as session:
        bind_checkpoint_state(TensorState()).x = values.clone()
        session.write(lead_time=1)
    return values


# --------------------------------------------------------------------------- devices at construction


@pytest.mark.parametrize(
    "device, message",
    [
        ("bogus", f"device 'bogus' is not a device: {ACCEPTED}"),
        ("cuda:x", f"device 'cuda:x' is not a device: {ACCEPTED}"),
        ("", f"device '' is not a device: {ACCEPTED}"),
        (None, f"device must be a str, an int or a torch.device, got None: {ACCEPTED}"),
        (1.5, f"device must be a str, an int or a torch.device, got 1.5: {ACCEPTED}"),
        (True, f"device must be a str, an int or a torch.device, got True: {ACCEPTED}"),
    ],
)
@pytest.mark.parametrize("flavour", [Checkpoint, e2c.Checkpoint], ids=["restartable", "bridge"])
def test_a_bad_device_is_refused_at_construction(tmp_path: Path, flavour: type, device: Any, message: str) -> None:
    store = tmp_path / "store"
    with pytest.raises(ValueError) as raised:
        flavour(NAME, path=store, device=device)
    assert str(raised.value) == message
    assert not isinstance(raised.value, CheckpointCorruptError)
    assert not store.exists()  # refused before the store was opened


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)], ids=str)
def test_cuda_without_a_gpu_is_refused_at_construction(tmp_path: Path, device: Any) -> None:
    with pytest.raises(ValueError) as raised:
        Checkpoint(NAME, path=tmp_path / "store", device=device)
    assert str(raised.value) == (
        f"device {device!r} is not usable here: torch.cuda.is_available() is False (no device visible to this "
        "process, or torch was built without cuda support); use device='cpu', or run where one is"
    )
    assert not (tmp_path / "store").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_index_beyond_the_visible_devices_is_refused(tmp_path: Path) -> None:
    count = torch.cuda.device_count()
    with pytest.raises(ValueError) as raised:
        Checkpoint(NAME, path=tmp_path / "store", device=f"cuda:{count}")
    assert str(raised.value) == (
        f"device 'cuda:{count}' is not usable here: this process sees {count} cuda device(s), "
        f"cuda:0 to cuda:{count - 1}; use one of those, or device='cpu'"
    )
    Checkpoint(NAME, path=tmp_path / "store", device=f"cuda:{count - 1}")  # the last one is fine


@pytest.mark.parametrize(
    "device", ["cpu", "cpu:0", "meta", torch.device("cpu"), torch.device("meta")], ids=lambda d: f"{d!r}"
)
def test_devices_available_everywhere_are_accepted(tmp_path: Path, device: Any) -> None:
    checkpoint = Checkpoint(NAME, path=tmp_path, device=device)
    assert checkpoint.device == torch.device(device)


def test_without_torch_only_the_cpu_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch made unimportable, as on a numpy-only install: the default device
    # still works, and a GPU is refused with the reason, not at the first restore.
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ValueError) as raised:
        Checkpoint(NAME, path=tmp_path / "gpu", rank=0, world_size=1, device="cuda")
    assert str(raised.value) == (
        "device 'cuda' needs torch, which is not installed: use device='cpu' (the default), "
        "or install torch for other devices"
    )
    with Checkpoint(NAME, path=tmp_path / "cpu", rank=0, world_size=1) as session:
        session.write(lead_time=1)
    assert [entry.lead_time for entry in Checkpoint(NAME, path=tmp_path / "cpu", rank=0, world_size=1).catalog] == [1]


# --------------------------------------------------------------------------- devices at restore


def test_a_refused_device_leaves_a_good_row_whole_and_restorable(tmp_path: Path) -> None:
    values = _write_row(tmp_path)
    for device in ("bogus", "cuda:7"):
        with pytest.raises(ValueError, match=re.escape(f"device {device!r}")):
            Checkpoint(NAME, path=tmp_path, device=device)
    # Nothing was marked or moved: the row verifies, is listed without a
    # fallback warning (any warning fails this suite), and restores bitwise.
    (entry,) = Checkpoint(NAME, path=tmp_path).catalog
    assert verify_row(entry.path) == []
    with Checkpoint(NAME, path=tmp_path).select(-1):
        restored = bind_checkpoint_state(TensorState())
        assert restored.checkpoint_state_loaded
        assert torch.equal(restored.x, values)


@pytest.mark.parametrize("device", ["bogus", "cuda:7"])
def test_a_tensor_that_cannot_be_placed_is_not_reported_as_damage(tmp_path: Path, device: str) -> None:
    # The codec's decode() takes any device (no Checkpoint checked it): a
    # placement failure is a CheckpointError saying the row is sound.
    values = torch.arange(4, dtype=torch.float64)
    encoded = codec.encode({"x": values}, root="state")
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(CheckpointError) as raised:
        codec.decode(encoded.document, encoded.payloads.__getitem__, root="state", device=device)
    assert not isinstance(raised.value, CheckpointCorruptError)
    message = str(raised.value)
    assert message.startswith(f"cannot place state['x'] on device {device!r}: ")
    assert message.endswith("The row is not damaged: restore with a device this process can use (device='cpu')")
    assert "\n" not in message
    # The same document restores where the device exists.
    restored = codec.decode(encoded.document, encoded.payloads.__getitem__, root="state", device="cpu")
    assert torch.equal(restored["x"], values)


# --------------------------------------------------------------------------- history in overwrite mode


def test_overwrite_with_a_history_warns_and_keeps_one_row(tmp_path: Path) -> None:
    with pytest.warns(CheckpointWarning) as caught:
        checkpoint = Checkpoint(NAME, path=tmp_path, mode="overwrite", history_size=3)
    (warning,) = caught
    assert str(warning.message) == (
        "history_size=3 is ignored: mode='overwrite' keeps one row; use mode='append' to keep a history of 3 rows"
    )
    assert warning.filename == __file__  # names the caller's line, not restartable's
    with checkpoint as session:
        for step in range(4):
            session.write(lead_time=step)
    assert [entry.lead_time for entry in checkpoint.catalog] == [3]


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "overwrite"}, {"mode": "overwrite", "history_size": 1}, {"mode": "append", "history_size": 3}],
    ids=["overwrite", "overwrite-1", "append-3"],
)
def test_consistent_history_arguments_do_not_warn(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint = Checkpoint(NAME, path=tmp_path, **kwargs)
    with checkpoint as session:
        for step in range(4):
            session.write(lead_time=step)
    kept = 3 if kwargs["mode"] == "append" else 1
    assert [entry.lead_time for entry in checkpoint.catalog] == list(range(4))[-kept:]


def test_the_bridge_ignores_a_history_in_overwrite_mode_silently_as_earth2studio_does(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint = e2c.Checkpoint(NAME, path=tmp_path, mode="overwrite", history_size=3)
    assert checkpoint.history_size == 1
    with checkpoint as session:
        for step in range(3):
            session.write(lead_time=step)
    assert [entry.lead_time for entry in checkpoint.catalog] == [2]


# --------------------------------------------------------------------------- environment variables


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "1e"])
def test_a_bad_pack_threshold_in_the_environment_is_named_before_a_row_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RESTARTABLE_PACK_BELOW", value)
    expected = re.escape(f"RESTARTABLE_PACK_BELOW={value!r} is not a non-negative number of bytes")
    with pytest.raises(ValueError, match=expected), Checkpoint(NAME, path=tmp_path / "store") as session:
        session.write()  # pragma: no cover - refused on entry
    assert not list((tmp_path / "store").glob("commits/*"))


@pytest.mark.parametrize("value", ["often", "-0.5", "nan"])
def test_a_bad_progress_interval_in_the_environment_is_one_line_and_exit_2_in_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    from restartable.cli import main

    with Checkpoint(NAME, path=tmp_path / "local") as session:
        session.write()
    monkeypatch.setenv("RESTARTABLE_PROGRESS_INTERVAL", value)
    code = main(["push", str(tmp_path / "local"), (tmp_path / "copy").as_uri()])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.splitlines() == [
        f"restartable push: error: RESTARTABLE_PROGRESS_INTERVAL={value!r} is not a non-negative number of seconds; "
        "unset it or give e.g. 30"
    ]
    assert not (tmp_path / "copy").exists()


def test_a_bad_lease_period_in_the_environment_is_named_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTARTABLE_LEASE_SECONDS", "half a minute")
    done = run_python("import restartable.store", check=False)
    assert done.returncode != 0
    assert "RESTARTABLE_LEASE_SECONDS='half a minute' is not a non-negative number of seconds" in done.stderr
