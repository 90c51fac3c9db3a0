#!/usr/bin/env python
"""Upload and download throughput of a directory checkpoint on an S3 server.

A directory of ``--mib`` MiB (default 256: eight float32 arrays saved with
``numpy.save``, the typical content of a model checkpoint directory, plus a
small JSON file) is

* saved with ``RemoteCheckpoint.save_sync(directory)`` (gzipped tarball,
  hashed while written, uploaded, then the save record) and restored with
  ``RemoteCheckpoint(..., checkpoint_src=...).load_sync()`` (download while
  hashing, checksum verified, every member checked, unpacked);
* copied with plain ``fs.put(directory, url, recursive=True)`` and
  ``fs.get(url, directory, recursive=True)`` of s3fs, the baseline, which
  checks and protects nothing.

Both run against the same S3-protocol server (moto's server mode, started
here on 127.0.0.1, or ``--endpoint`` for a real one) in the same run, taking
turns for ``--repeats`` rounds. Printed: median seconds and MB/s of each,
and the ratios restartable/baseline of the throughputs (target: 1.0 or
more means "as fast as a plain copy").

Usage::

    python benchmarks/bench_remote.py
    python benchmarks/bench_remote.py --mib 64 --repeats 2 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from _common import log, log_run_head, log_table_header, log_to_stderr, run_meta


def make_directory(root: Path, mib: int) -> int:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_file = (mib << 20) // 8 // 4
    for index in range(8):
        np.save(root / f"weights_{index}.npy", rng.standard_normal(per_file, dtype=np.float32))
    (root / "config.json").write_text(json.dumps({"step": 41, "lr": 1e-4}))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def start_server() -> tuple[Any, str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="directory size in MiB (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each timing every method once (default 3)")
    parser.add_argument("--endpoint", default=None, help="S3 endpoint URL (default: a moto server started here)")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, report on stderr")
    args = parser.parse_args(argv)
    if args.json:
        log_to_stderr()

    server = None
    if args.endpoint is None:
        server, endpoint = start_server()
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    else:
        endpoint = args.endpoint
    os.environ["AWS_ENDPOINT_URL"] = endpoint

    import s3fs

    from restartable.remote import RemoteCheckpoint

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    scratch = Path(tempfile.mkdtemp(prefix="restartable-bench-remote-"))
    times: dict[str, list[float]] = {"save": [], "load": [], "put": [], "get": []}
    try:
        source = scratch / "checkpoint"
        nbytes = make_directory(source, args.mib)
        meta = run_meta(scratch, s3fs=s3fs.__version__)
        meta.update(endpoint="moto server (127.0.0.1)" if server else endpoint, bytes=nbytes)
        log_run_head(meta)
        for round_index in range(args.repeats):
            prefix = f"s3://{bucket}/round-{round_index}"
            # Baseline: plain recursive copy up and down.
            started = time.perf_counter()
            fs.put(str(source), f"{bucket}/round-{round_index}/plain", recursive=True)
            times["put"].append(time.perf_counter() - started)
            target = scratch / f"plain-{round_index}"
            started = time.perf_counter()
            fs.get(f"{bucket}/round-{round_index}/plain", str(target), recursive=True)
            times["get"].append(time.perf_counter() - started)
            shutil.rmtree(target)
            # restartable: archive, hash, upload, record; then download, verify, check, unpack.
            saver = RemoteCheckpoint(f"{prefix}/attempt-0")
            started = time.perf_counter()
            saver.save_sync(source)
            times["save"].append(time.perf_counter() - started)
            loader = RemoteCheckpoint(
                f"{prefix}/attempt-1", checkpoint_src=f"{prefix}/attempt-0", path=scratch / f"restored-{round_index}"
            )
            started = time.perf_counter()
            restored = loader.load_sync()
            times["load"].append(time.perf_counter() - started)
            assert (
                restored is not None
                and (restored / "weights_7.npy").stat().st_size == (source / "weights_7.npy").stat().st_size
            )
            shutil.rmtree(restored)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(Exception):
            fs.rm(bucket, recursive=True)
        if server is not None:
            server.stop()

    median = {key: statistics.median(values) for key, values in times.items()}
    rate = {key: nbytes / value / 1e6 for key, value in median.items()}
    ratios = {"upload": median["put"] / median["save"], "download": median["get"] / median["load"]}
    log()
    log_table_header(f"{'operation':<44}{'median s':>10}{'MB/s':>10}")
    for key, label in (
        ("put", "baseline fs.put (recursive)"),
        ("save", "RemoteCheckpoint.save_sync (tar.gz, record)"),
        ("get", "baseline fs.get (recursive)"),
        ("load", "RemoteCheckpoint.load_sync (verify, unpack)"),
    ):
        log(f"{label:<44}{median[key]:>10.3f}{rate[key]:>10.1f}")
    log()
    log(f"upload throughput ratio   restartable / fs.put = {ratios['upload']:.2f}")
    log(f"download throughput ratio restartable / fs.get = {ratios['download']:.2f}")
    if args.json:
        json.dump(
            {"meta": meta, "seconds": times, "median": median, "mb_per_s": rate, "ratios": ratios}, sys.stdout, indent=2
        )
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
