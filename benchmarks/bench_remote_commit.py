#!/usr/bin/env python
"""Requests and time per commit of a checkpoint on an S3 server, against the fewest a commit can take.

A state of ``--kib`` KiB (one float32 array and a counter) is committed
``--rows`` times with ``Checkpoint(..., mode="append", history_size=3)`` on
an S3 prefix: each commit uploads the row, and retires the row that falls
out of the history. The baseline, in the same run and on the same server,
does the least any such design must do with plain s3fs calls: per row, one
PUT of the payload bytes, one PUT of a small JSON record, and one batch
DELETE of the retired row's two objects. It checks, verifies and protects
nothing.

The server is moto's (the same WSGI application ``moto.server`` runs, on
127.0.0.1, started here) behind a counting middleware, so that every HTTP
request either side sends is counted. Printed: requests per row and
milliseconds per row of each side, and the ratios restartable/baseline
(targets: at most 2.0 requests, as fast as 1/2.0).

Usage::

    python benchmarks/bench_remote_commit.py
    python benchmarks/bench_remote_commit.py --rows 20 --repeats 1 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from _common import log, log_table_header, log_to_stderr

TARGET_REQUESTS = 2.0
TARGET_TIME = 2.0
HISTORY = 3


class CountingServer:
    """moto's S3 application on 127.0.0.1 behind a middleware that counts requests."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.requests = 0
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            with self._lock:
                self.requests += 1
            return app(environ, start_response)

        self._server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()


@dataclass
class BenchState:
    step: int = 0
    data: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


def run_restartable(url: str, rows: int, elements: int) -> float:
    from restartable import Checkpoint

    with Checkpoint("bench", path=url, mode="append", history_size=HISTORY) as session:
        state = session.bind(BenchState())
        started = time.perf_counter()
        for step in range(1, rows + 1):
            state.step = step
            state.data = np.full(elements, step, dtype=np.float32)
            session.write(lead_time=step)
        return time.perf_counter() - started


def run_baseline(fs: Any, prefix: str, rows: int, elements: int) -> float:
    started = time.perf_counter()
    for step in range(1, rows + 1):
        row = f"{prefix}/{step:06d}"
        fs.pipe_file(f"{row}/data.bin", np.full(elements, step, dtype=np.float32).tobytes())
        fs.pipe_file(f"{row}/record.json", json.dumps({"step": step}).encode())
        if step > HISTORY:
            retired = f"{prefix}/{step - HISTORY:06d}"
            fs.rm([f"{retired}/data.bin", f"{retired}/record.json"])
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50, help="commits per round (default 50)")
    parser.add_argument("--kib", type=int, default=256, help="state size in KiB (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each timing both sides once (default 3)")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, report on stderr")
    args = parser.parse_args(argv)
    if args.json:
        log_to_stderr()

    server = CountingServer()
    os.environ.update(
        AWS_ENDPOINT_URL=server.endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    elements = args.kib * 1024 // 4
    seconds: dict[str, list[float]] = {"restartable": [], "baseline": []}
    requests: dict[str, list[float]] = {"restartable": [], "baseline": []}
    try:
        for round_index in range(args.repeats):
            for side in ("baseline", "restartable"):
                before = server.requests
                prefix = f"{bucket}/round-{round_index}/{side}"
                if side == "restartable":
                    spent = run_restartable(f"s3://{prefix}", args.rows, elements)
                else:
                    spent = run_baseline(fs, prefix, args.rows, elements)
                seconds[side].append(spent / args.rows)
                # The whole round, opening and closing included, over its rows.
                requests[side].append((server.requests - before) / args.rows)
    finally:
        with contextlib.suppress(Exception):
            fs.rm(bucket, recursive=True)
        server.stop()

    per_row = {side: statistics.median(values) for side, values in requests.items()}
    ms = {side: statistics.median(values) * 1e3 for side, values in seconds.items()}
    ratio_requests = per_row["restartable"] / per_row["baseline"]
    ratio_time = ms["restartable"] / ms["baseline"]
    log()
    log(f"{args.rows} commits of a {args.kib} KiB state, history {HISTORY}, {args.repeats} round(s), moto server")
    log_table_header(f"{'side':<12} {'requests/row':>13} {'ms/row':>9}")
    for side in ("baseline", "restartable"):
        log(f"{side:<12} {per_row[side]:>13.2f} {ms[side]:>9.2f}")
    verdict = "meets target" if ratio_requests <= TARGET_REQUESTS else "MISSES target"
    log(f"requests restartable/baseline: {ratio_requests:.2f} (target <= {TARGET_REQUESTS}: {verdict})")
    verdict = "meets target" if ratio_time <= TARGET_TIME else "MISSES target"
    log(f"time restartable/baseline:     {ratio_time:.2f} (target <= {TARGET_TIME}: {verdict})")
    if args.json:
        json.dump(
            {
                "meta": {"rows": args.rows, "kib": args.kib, "history": HISTORY, "repeats": args.repeats},
                "requests_per_row": per_row,
                "ms_per_row": ms,
                "raw": {"requests_per_row": requests, "seconds_per_row": seconds},
                "ratio_requests": ratio_requests,
                "ratio_time": ratio_time,
                "target_ratio_requests_max": TARGET_REQUESTS,
                "target_ratio_time_max": TARGET_TIME,
            },
            sys.stdout,
            indent=1,
        )
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
