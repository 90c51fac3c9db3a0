"""Fresh child processes without paying for heavy imports again: a warm interpreter that forks.

Importing earth2studio costs about 20 s of CPU here (its optional-dependency
checks call ``inspect.stack()`` at import, which scans ``sys.modules`` once
per frame), and torch about 2 s. A test that starts a dozen such processes
spends minutes importing. :class:`WarmPython` imports the heavy modules once,
in a server process, then forks one child per run: each child is a new
process (its own pid, memory and file descriptors; SIGKILL kills it alone,
``os._exit`` in it ends it alone) that runs the script, module or code it is
given with its own ``argv``, environment and working directory, exactly as
``python SCRIPT``, ``python -m MODULE`` or ``python -c CODE`` would once the
preloaded modules were imported.

What a forked child does not get is a pristine interpreter: modules imported
by the preload are already in ``sys.modules``, and environment variables that
they read at import time come from the server's environment. Tests about
import order (installing a bridge before or after importing a package) use
plain ``subprocess.Popen``.

The server is single-threaded (forking a process with threads is unsafe) and
talks over a ``SOCK_SEQPACKET`` socket: a request carries the child's stdio
file descriptors (``SCM_RIGHTS``), the server answers with the child's pid and,
later, its exit status.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["XARRAY_WARMUP", "WarmProcess", "WarmPython"]

# For preloads of children that use xarray: a first DataArray imports the
# duck-array modules (dask, parts of pandas), about 1 s of CPU that every
# child would otherwise pay again at its first workflow step.
XARRAY_WARMUP = "import numpy, xarray\nxarray.DataArray(numpy.zeros(1))\n"

_SERVER = r"""
import json, os, select, signal, socket, sys

control = socket.socket(fileno=int(sys.argv[1]))


def pythonpath(env):
    return [os.path.abspath(entry) for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]


SERVER_PYTHONPATH = pythonpath(os.environ)
preload = sys.stdin.read()
exec(compile(preload, "<preload>", "exec"), {"__name__": "__preload__"})
# What the preload made is never garbage: out of the collector's sight, a
# child's collections stay as cheap as in a fresh interpreter (with torch
# loaded, the first S3 client costs 0.43 s of CPU instead of 0.16 s).
import gc
gc.freeze()

wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *_: None)
control.send(b'{"ready": true}')


def run_child(request, fds):
    control.close()
    os.close(wake_r)
    os.close(wake_w)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    import io
    unbuffered = bool(request["env"].get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=unbuffered)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace")
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    # What an interpreter started with this environment would have: its
    # PYTHONPATH entries right after sys.path[0], in place of the server's.
    for entry in SERVER_PYTHONPATH:
        if entry in sys.path[1:]:
            sys.path.remove(entry)
    sys.path[1:1] = pythonpath(request["env"])
    sys.dont_write_bytecode = bool(request["env"].get("PYTHONDONTWRITEBYTECODE"))
    code = 0
    try:
        import runpy
        kind, target, args = request["kind"], request["target"], request["args"]
        if kind == "module":
            sys.argv = [target, *args]
            sys.path[0] = os.getcwd()
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        elif kind == "code":
            import types
            sys.argv = ["-c", *args]
            sys.path[0] = ""
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(target, "<string>", "exec"), main.__dict__)
        else:
            sys.argv = [target, *args]
            sys.path[0] = os.path.dirname(os.path.abspath(target))
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        # What the interpreter does at exit: join non-daemon threads, run
        # the atexit handlers, flush the streams.
        import atexit, threading
        try:
            threading._shutdown()
            atexit._run_exitfuncs()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(code)


while True:
    readable, _, _ = select.select([control, wake_r], [], [])
    if wake_r in readable:
        os.read(wake_r, 4096)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            control.send(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}).encode())
    if control in readable:
        message, fds, _, _ = socket.recv_fds(control, 1 << 20, 3)
        if not message:
            break
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            run_child(request, fds)
        for fd in fds:
            os.close(fd)
        control.send(json.dumps({"started": request["id"], "pid": pid}).encode())
"""


def _split_argv(argv: Sequence[str]) -> tuple[str, str, list[str]]:
    """``[python, -m MOD | -c CODE | SCRIPT, ARGS...]`` -> (kind, target, args)."""
    if not argv or argv[0] != sys.executable:
        raise ValueError(f"a warm child runs this interpreter ({sys.executable}), not {argv[:1]}")
    rest = list(argv[1:])
    if rest[:1] == ["-m"]:
        return "module", rest[1], rest[2:]
    if rest[:1] == ["-c"]:
        return "code", rest[1], rest[2:]
    if not rest or rest[0].startswith("-"):
        raise ValueError(f"unsupported interpreter options for a warm child: {rest[:1]}")
    return "script", rest[0], rest[1:]


class WarmProcess:
    """A forked child, with the parts of :class:`subprocess.Popen` that tests use."""

    def __init__(
        self,
        server: WarmPython,
        pid: int,
        stdin: IO[str] | None,
        stdout: IO[str] | None,
        stderr: IO[str] | None = None,
    ) -> None:
        self._server = server
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server._exit_code(self.pid, block=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            code = self._server._exit_code(self.pid, block=True, timeout=timeout)
            if code is None:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            self.returncode = code
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            # It may end between the poll and the kill: nothing to signal then.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class WarmPython:
    """A server that ran ``preload`` once and forks a child for each :meth:`popen`.

    Example::

        with WarmPython("import torch", env=os.environ) as server:
            child = server.popen([sys.executable, "-c", "import torch; print(torch.ones(2).sum())"])
            assert child.stdout.read() == "tensor(2.)\\n" and child.wait() == 0
    """

    def __init__(self, preload: str, env: Mapping[str, str], cwd: Path | str | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control = ours
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pids: dict[int, int] = {}
        self._codes: dict[int, int] = {}
        self._next_id = 0
        self._closed = False
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            text=True,
        )
        theirs.close()
        assert self._proc.stdin is not None
        self._proc.stdin.write(preload)
        self._proc.stdin.close()
        # The preload runs while the caller goes on; the first popen waits for it.
        self._ready = False
        self._reader = threading.Thread(target=self._read, name="warm-python", daemon=True)
        self._reader.start()

    def _wait_ready(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._ready or self._closed)
            if not self._ready:
                assert self._proc.stderr is not None
                raise RuntimeError(f"the warm interpreter failed to preload:\n{self._proc.stderr.read()[-4000:]}")

    def _read(self) -> None:
        while True:
            message = self._control.recv(1 << 16)
            with self._changed:
                if not message:
                    self._closed = True
                    self._changed.notify_all()
                    return
                reply: dict[str, Any] = json.loads(message)
                if "ready" in reply:
                    self._ready = True
                elif "started" in reply:
                    self._pids[reply["started"]] = reply["pid"]
                else:
                    self._codes[reply["exited"]] = reply["code"]
                self._changed.notify_all()

    def _exit_code(self, pid: int, block: bool, timeout: float | None = None) -> int | None:
        with self._changed:
            if block:
                self._changed.wait_for(lambda: pid in self._codes or self._closed, timeout)
            if pid not in self._codes and self._closed:
                raise RuntimeError(f"the warm interpreter ended before its child {pid}")
            return self._codes.get(pid)

    def popen(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stderr: int | None = subprocess.STDOUT,
    ) -> WarmProcess:
        """Start ``argv`` (``[sys.executable, ...]``) in a child; text pipes for stdout and, with ``PIPE``, stdin.

        ``stderr`` is ``STDOUT`` (merged into stdout), ``PIPE`` (a pipe of
        its own) or anything else: this process's stderr.
        """
        kind, target, args = _split_argv(argv)
        self._wait_ready()
        out_r, out_w = os.pipe()
        if stdin == subprocess.PIPE:
            in_r, in_w = os.pipe()
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY), -1
        err_r = -1
        if stderr == subprocess.STDOUT:
            err = out_w
        elif stderr == subprocess.PIPE:
            err_r, err = os.pipe()
        else:
            err = os.dup(2)
        with self._changed:
            request_id = self._next_id
            self._next_id += 1
        request = {
            "id": request_id,
            "kind": kind,
            "target": target,
            "args": args,
            "env": dict(os.environ if env is None else env),
            "cwd": str(cwd if cwd is not None else os.getcwd()),
        }
        try:
            socket.send_fds(self._control, [json.dumps(request).encode()], [in_r, out_w, err])
        finally:
            for fd in {in_r, out_w, err}:
                os.close(fd)
        with self._changed:
            self._changed.wait_for(lambda: request_id in self._pids or self._closed)
            if request_id not in self._pids:
                for fd in (out_r, err_r, in_w):
                    if fd != -1:
                        os.close(fd)
                raise RuntimeError("the warm interpreter ended before it started the child")
            pid = self._pids.pop(request_id)
        return WarmProcess(
            self,
            pid,
            os.fdopen(in_w, "w") if in_w != -1 else None,
            os.fdopen(out_r, "r"),
            os.fdopen(err_r, "r", errors="backslashreplace") if err_r != -1 else None,
        )

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """:func:`subprocess.run` with ``capture_output=True, text=True``, in a forked child.

        On a timeout the child is killed and :class:`subprocess.TimeoutExpired` raised.
        """
        child = self.popen(argv, env=env, cwd=cwd, stderr=subprocess.PIPE)
        assert child.stdout is not None and child.stderr is not None
        captured: dict[str, str] = {}

        def drain(name: str, stream: IO[str]) -> None:
            with stream:
                captured[name] = stream.read()

        readers = [
            threading.Thread(target=drain, args=(name, stream), daemon=True)
            for name, stream in (("stdout", child.stdout), ("stderr", child.stderr))
        ]
        for reader in readers:
            reader.start()
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            for reader in readers:
                reader.join()
            raise subprocess.TimeoutExpired(
                list(argv), timeout or 0.0, output=captured.get("stdout"), stderr=captured.get("stderr")
            ) from None
        for reader in readers:
            reader.join()
        return subprocess.CompletedProcess(list(argv), code, captured["stdout"], captured["stderr"])

    def __enter__(self) -> WarmPython:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server (children still running go on; kill them first if they must not)."""
        # Shut down first: the server sees the end of its requests and exits,
        # and the reader's recv returns empty; close once the reader is done.
        self._control.shutdown(socket.SHUT_RDWR)
        self._proc.wait(timeout=60)
        self._reader.join(10)
        self._control.close()
        assert self._proc.stderr is not None
        self._proc.stderr.close()
