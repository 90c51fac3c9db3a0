"""``restartable demo``: killed with SIGKILL, resumed, compared bit for bit — end to end in real processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("xarray")
zarr = pytest.importorskip("zarr")

from restartable import Checkpoint, cli, demo  # noqa: E402
from restartable.components import ZarrIO  # noqa: E402
from restartable.demo import CHECKPOINT_DIR, CHECKPOINT_NAME, REFERENCE_STORE, RESUMED_STORE, compare_stores  # noqa: E402
from warm_python import XARRAY_WARMUP, WarmProcess, WarmPython  # noqa: E402

SMALL = ["--members", "3", "--steps", "5", "--nlat", "4", "--nlon", "8"]


def run_demo_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m restartable.cli demo ARGS``: a real process whose runs are real processes too."""
    return subprocess.run(
        [sys.executable, "-m", "restartable.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli_here(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``restartable ARGS`` in this process (what ``python -m restartable.cli`` runs): exit status, stdout, stderr.

    For the tests that start no forecast run: the CLI's entry point, as a
    process, is test_demo_json_end_to_end's.
    """
    capsys.readouterr()
    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # argparse: --help, usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def warm_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The demo's runs forked from an interpreter that imported what they import.

    Each run is still a new process (SIGKILLed alone, resumed from what is on
    disk) started with the demo's own command line and environment; only the
    ~3 s of CPU that a fresh interpreter spends importing torch, xarray and
    zarr is saved. test_demo_json_end_to_end runs the demo with fresh
    interpreters, as users do.
    """
    # The environment the demo gives its runs (tqdm reads TQDM_* at import).
    server = WarmPython(
        "import numpy, torch, xarray, zarr, restartable.components, restartable.workflows\n" + XARRAY_WARMUP,
        demo._child_env(),
    )

    def popen(command: list[str], **kwargs: Any) -> WarmProcess:
        assert kwargs["stdout"] == subprocess.PIPE and kwargs["text"], kwargs
        # The verbose demo lets its runs' stderr through (stderr=None), as does a warm child.
        assert kwargs["stderr"] is None, kwargs
        return server.popen(command, env=kwargs["env"], stdin=kwargs["stdin"], stderr=None)

    monkeypatch.setattr(demo, "subprocess", types.SimpleNamespace(Popen=popen, PIPE=subprocess.PIPE))
    try:
        yield
    finally:
        server.close()


def test_demo_json_end_to_end(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = run_demo_cli(*SMALL, "--json", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # nothing but the JSON on stdout
    # 2 member batches (2 + 1 members) of 6 lead times; killed after round(0.4 * 12) writes.
    assert summary["total_step_writes"] == 12
    assert summary["kill_after"] == 5
    assert summary["identical"] is True
    assert summary["comparison"]["identical"] is True
    assert summary["comparison"]["differences"] == []
    names = {a["name"] for a in summary["comparison"]["arrays"]}
    assert {"u10m", "v10m", "ensemble", "lead_time"} <= names
    for record in summary["comparison"]["arrays"]:
        assert record["equal"] and record["values_equal"] and record["bytes_equal"]
        assert record["sha256_a"] == record["sha256_b"]
        assert record["nan_a"] == record["nan_b"] == 0  # every step was written
    # The kill really happened, with SIGKILL, after the requested number of writes.
    assert summary["killed"]["returncode"] == -9
    assert summary["killed"]["writes"] == 5
    # The resumed run started from a committed row with real progress in it.
    resumed_from = summary["resumed_from"]
    assert resumed_from["commit_id"]
    assert resumed_from["completed_ensembles"] or (resumed_from["lead_time_hours"] or 0) > 0
    assert resumed_from["write_count"] < summary["kill_after"]  # the last write was not committed
    assert summary["resume"]["returncode"] == 0
    assert summary["resume"]["writes"] < summary["total_step_writes"]  # it did not start over
    assert summary["resume"]["continued_from_model_state"] is True
    assert summary["resume"]["first_write"]["lead_hours"] > resumed_from["lead_time_hours"]
    assert summary["reference"]["writes"] == 12
    assert summary["checkpoint"]["final"]["bytes"] > 0
    assert summary["workdir_removed"] is False  # an explicit workdir is kept

    # Check the outputs independently of the demo's own comparison.
    resumed = zarr.open_group(str(workdir / RESUMED_STORE), mode="r")
    reference = zarr.open_group(str(workdir / REFERENCE_STORE), mode="r")
    for name in ("u10m", "v10m"):
        a, b = np.asarray(resumed[name][...]), np.asarray(reference[name][...])
        assert a.shape == (3, 1, 6, 4, 8)
        assert not np.isnan(a).any()
        assert a.tobytes() == b.tobytes()
    catalog = Checkpoint(CHECKPOINT_NAME, path=workdir / CHECKPOINT_DIR, rank=0, world_size=1).catalog
    assert catalog[-1].metadata["completed_ensembles"] == [0, 1, 2]


def test_demo_human_output_and_temporary_workdir(warm_runs: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli_here(
        capsys, "demo", "--members", "2", "--steps", "3", "--nlat", "4", "--nlon", "8", "--batch-size", "1"
    )
    assert code == 0, err
    assert "exit status -9 (SIGKILL)" in out
    assert "IDENTICAL" in out
    assert "bitwise equal" in out and " NO" not in out
    assert 'Checkpoint("restartable-demo")' in out  # the catalog table
    assert "Timings" in out and "Sizes on disk" in out
    match = re.search(r"workdir (\S+) removed\.", out)
    assert match, out
    assert not Path(match.group(1)).exists()


def test_demo_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli_here(capsys, "demo", "--help")
    assert code == 0
    for option in (
        "--members",
        "--steps",
        "--nlat",
        "--nlon",
        "--batch-size",
        "--workdir",
        "--keep",
        "--json",
        "--quiet",
        "--kill-after",
    ):
        assert option in out
    code, out, _ = run_cli_here(capsys, "--help")
    assert code == 0 and "demo" in out


@pytest.mark.parametrize("args", [["--members", "0"], ["--steps", "2", "--members", "1", "--kill-after", "3"]])
def test_demo_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli_here(capsys, "demo", *args)
    assert code == 2
    assert "restartable demo: error:" in err


def test_demo_refuses_a_workdir_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / RESUMED_STORE).mkdir()
    code, _, err = run_cli_here(capsys, "demo", *SMALL, "--workdir", str(tmp_path))
    assert code == 2
    assert "not written by the demo" in err
    assert (tmp_path / RESUMED_STORE).is_dir()


def _store(path: Path, values: np.ndarray) -> None:
    io = ZarrIO(path)
    coords = OrderedDict(
        ensemble=np.arange(values.shape[0]), lead_time=np.arange(values.shape[1]) * np.timedelta64(6, "h")
    )
    io.add_array(coords, "u10m")
    io.write(values, coords, "u10m")


def test_compare_stores_reports_a_difference(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    _store(tmp_path / "a.zarr", values)
    _store(tmp_path / "b.zarr", values)
    same = compare_stores(tmp_path / "a.zarr", tmp_path / "b.zarr")
    assert same["identical"] is True and same["differences"] == []

    changed = values.copy()
    changed[2, 1] = np.nextafter(changed[2, 1], np.float32(np.inf))  # one ulp in one value
    _store(tmp_path / "c.zarr", changed)
    report = compare_stores(tmp_path / "a.zarr", tmp_path / "c.zarr")
    assert report["identical"] is False
    record = next(r for r in report["arrays"] if r["name"] == "u10m")
    assert record["equal"] is False and record["values_equal"] is False
    assert record["differing_elements"] == 1
    assert record["first_difference"]["index"] == [2, 1]
    assert record["sha256_a"] != record["sha256_b"]
    assert len(report["differences"]) == 1 and "u10m" in report["differences"][0]
    coords = [r for r in report["arrays"] if r["name"] != "u10m"]
    assert coords and all(r["equal"] for r in coords)


def test_compare_stores_is_bitwise_on_nan_payloads(tmp_path: Path) -> None:
    # numpy.array_equal(equal_nan=True) calls two NaNs equal; their bytes may not be.
    values = np.zeros((2, 3), dtype=np.float32)
    values[0, 0] = np.nan
    other = values.copy()
    other.view(np.uint32)[0, 0] = 0x7FC00001  # another quiet NaN
    for name, data in (("a.zarr", values), ("b.zarr", other)):
        group = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=3)
        array = group.create_array("u10m", shape=data.shape, dtype=data.dtype, chunks=data.shape, fill_value=0.0)
        array[...] = data
    report = compare_stores(tmp_path / "a.zarr", tmp_path / "b.zarr")
    record = report["arrays"][0]
    assert record["nan_a"] == record["nan_b"] == 1
    assert record["values_equal"] is True
    assert record["bytes_equal"] is False
    assert record["differing_elements"] == 1
    assert report["identical"] is False


def test_compare_stores_reports_a_missing_array(tmp_path: Path) -> None:
    values = np.ones((2, 2), dtype=np.float32)
    _store(tmp_path / "a.zarr", values)
    _store(tmp_path / "b.zarr", values)
    extra = ZarrIO(tmp_path / "b.zarr")
    extra.add_array(OrderedDict(ensemble=np.arange(2), lead_time=np.arange(2) * np.timedelta64(6, "h")), "v10m")
    report = compare_stores(tmp_path / "a.zarr", tmp_path / "b.zarr")
    assert report["identical"] is False
    assert any("v10m: only in b" in line for line in report["differences"])
