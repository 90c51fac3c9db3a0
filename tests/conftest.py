"""Shared fixtures. Tests use real files, real processes and real tensors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from warm_python import WarmPython

# Every Python process a test starts runs tests/site/sitecustomize.py at
# start-up: it makes importing earth2studio cost seconds instead of half a
# minute of CPU (see that module for why and how).
_SITE = Path(__file__).resolve().parent / "site"
os.environ["PYTHONPATH"] = os.pathsep.join([str(_SITE), *filter(None, [os.environ.get("PYTHONPATH")])])

# Bytecode is cached even where the environment says PYTHONDONTWRITEBYTECODE:
# without it every worker parses and rewrites each test module again (6 s
# of CPU per worker) and every child compiles restartable again. Tests of
# bytecode-less imports set the variable for their own children.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An empty directory for one checkpoint store."""
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may write into the user's real ~/.cache, and rank variables of
    # the machine running the tests must not leak into them.
    monkeypatch.setenv("RESTARTABLE_CACHE", str(tmp_path / "cache"))
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def one_file_per_array(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows with a ``.npy`` file per array (format 1), in this process and every child it starts.

    For tests that damage or inspect a named payload file (``p000000.npy``):
    the layout large arrays keep, and the one rows had before packs. Packed
    rows have their own damage tests (``test_packs.py``, ``RowStoreTests``).
    """
    monkeypatch.setenv("RESTARTABLE_PACK_BELOW", "0")


_warm: WarmPython | None = None
_WARM_PRELOAD = """
import numpy
try:
    import torch
except ImportError:
    pass
"""


def run_python(
    code: str,
    *args: str,
    timeout: float = 120,
    check: bool = True,
    warm: bool = False,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process (same interpreter, same environment).

    ``warm=True`` forks the process from an interpreter of this worker that
    has imported numpy and torch (and nothing else): 2 s of CPU less per
    child. For children whose test is not about what gets imported.
    """
    global _warm
    env = dict(os.environ)
    argv = [sys.executable, "-c", code, *args]
    if warm:
        if _warm is None:
            _warm = WarmPython(_WARM_PRELOAD, env=env)
        result = _warm.run(argv, env=env, cwd=cwd, timeout=timeout)
    else:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker more than CPUs.

    About a sixth of a worker's time is spent waiting (fsync, rank processes
    holding for a signal, object-store round trips); a third worker on two
    CPUs fills it. Measured on 2 CPUs: 2 workers 4 min 52 s, 3 workers
    4 min 15 s, 4 workers 4 min 29 s.
    """
    return len(os.sched_getaffinity(0)) + 1


def pytest_unconfigure(config: pytest.Config) -> None:
    if _warm is not None:
        _warm.close()


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto's server mode) on 127.0.0.1 and a free port.

    The endpoint and dummy credentials go into ``os.environ`` for the whole
    session, so that s3fs in this process and in every subprocess started by
    a test reaches this server through the usual AWS configuration
    (``AWS_ENDPOINT_URL``), exactly as a user's job would reach S3.
    """
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    # moto's dispatcher lists its own package folder (a stat per service, some
    # 200) on every request to find the backend; the list never changes.
    import moto.backends

    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: iter(modules)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        # Give up fast on a dead endpoint; restartable retries on its own.
        AWS_MAX_ATTEMPTS="2",
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS")


@pytest.fixture(scope="module")
def s3_module_bucket(s3_server: str) -> str:
    """One bucket on the test S3 server per test module, as ``s3://<bucket>``."""
    import uuid

    import s3fs

    name = f"test-{uuid.uuid4().hex[:16]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"


@pytest.fixture
def s3_bucket(s3_module_bucket: str) -> str:
    """A fresh, empty prefix on the test S3 server, as ``s3://<bucket>/<uuid>``.

    A prefix of the module's bucket rather than a bucket per test: creating
    a bucket costs moto up to a second and a half under load, and every
    test uses its URL as a prefix anyway.
    """
    import uuid

    return f"{s3_module_bucket}/{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- stress


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``stress`` unless the run selects them (``-m stress``).

    The default run keeps one case of each behaviour; ``pytest.param(...,
    marks=pytest.mark.stress)`` puts the rest of a matrix in the stress run.
    """
    if "stress" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="stress run: select it with -m stress")
    for item in items:
        if item.get_closest_marker("stress") is not None:
            item.add_marker(skip)
