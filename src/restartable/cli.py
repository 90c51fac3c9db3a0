"""Command-line interface: ``restartable ls | show | verify | gc | push | pull | import-earth2studio | demo``.

Exit codes: 0 success; 1 damage found (``ls``, ``verify``, or rows
``push``/``pull`` skipped as damaged) or outputs that differ (``demo``); 2
usage error or a path that is not a checkpoint; 3 the checkpoint is locked
by a running writer (``gc``, ``push``, ``pull``); 4 an object store failed
(network, permissions); 5 a local file system refused (permissions, a
read-only or full disk). Every failure is one line on stderr, never a
traceback. Every command takes ``--json`` for scripts. ``ls``, ``show``,
``verify`` and ``gc`` also take a URL (``s3://bucket/prefix``): every
command works on a :class:`~restartable.store.RowStore`, whatever its backend.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import codec
from ._env import EnvironmentValueError
from ._extras import MissingExtraError
from ._text import escaped
from ._version import __version__
from .checkpoint import _entry_from_row, format_table
from .errors import CheckpointCorruptError, CheckpointLockedError, CheckpointRemoteError, CheckpointWriteError
from .store import Problem, RowStore, Scan, clean_leftovers, open_row, open_store, rank_stores, scan_rows, verify_row
from .store._layout import MANIFEST_NAME, is_url, rank_folder_name, sequence_of

EXIT_OK, EXIT_DAMAGED, EXIT_USAGE, EXIT_LOCKED, EXIT_REMOTE, EXIT_IO = 0, 1, 2, 3, 4, 5


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as every other failure of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def location(text: str) -> str:
    """A command-line PATH argument: a local path or a URL (opened by :func:`_store`)."""
    return text


def _store(args: argparse.Namespace) -> RowStore:
    return open_store(args.path, args.storage_options)


def _rank_stores(args: argparse.Namespace) -> list[RowStore]:
    try:
        return rank_stores(_store(args))
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None


def _scans(args: argparse.Namespace) -> list[tuple[str, Scan]]:
    return [(store.location, scan_rows(store)) for store in _rank_stores(args)]


def _leftovers(store: RowStore) -> list[dict[str, Any]]:
    """What interrupted commits left in ``store``, listed only (``restartable gc`` removes it)."""
    interrupted, retired = store.clean_leftovers(dry_run=True)
    found: list[dict[str, Any]] = [{"path": p, "kind": "interrupted commit"} for p in interrupted]
    found += [{"path": p, "kind": "retired row not yet deleted"} for p in retired]
    for item in found:
        # An object store's interrupted upload is named by its row; a local
        # staging folder is not, until it is renamed.
        name = item["path"].rstrip("/").rsplit("/", 1)[-1]
        item["commit_id"] = name if sequence_of(name) is not None else None
    return found


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    if args.json:
        json.dump(payload, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(escaped(text))


def _row_summary(index: int, row: Any) -> dict[str, Any]:
    entry = _entry_from_row(row)
    metadata = codec.describe(row.body["metadata"])
    return {
        "row": index,
        "commit_id": entry.commit_id,
        "sequence": entry.sequence,
        "lead_time": metadata.get("lead_time") if isinstance(metadata, dict) else None,
        "metadata": metadata,
        "write_count": entry.write_count,
        "level": entry.level,
        "states": list(entry.state_ids),
        "saved_at": entry.saved_at,
        "bytes": sum(f["size"] for f in row.files),
        # The step of an iterator checkpoint row (restartable.iterators); None for catalog rows.
        "step": row.body.get("step"),
    }


def _rank_summary(scans: list[tuple[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Each sequence with the ranks that have it whole, and the newest every rank has."""
    ranks = {}
    for rank_path, scan in scans:
        name = rank_path.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("rank_"):
            ranks[int(name[5:])] = {row.sequence for row in scan.rows}
    if len(ranks) < 2:
        return [], ""
    world = max(ranks) + 1
    # Rows record the world size they were written with; trust it over the folders present.
    for _, scan in scans:
        for row in scan.rows:
            world = max(world, int(row.body.get("world_size", world)))
    sequences = sorted(set().union(*ranks.values()))
    common = [s for s in sequences if all(s in ranks.get(r, set()) for r in range(world))]
    restart = max(common, default=None)
    summary = [
        {
            "sequence": s,
            "ranks": [r for r in range(world) if s in ranks.get(r, set())],
            "all_ranks": s in common,
            "restart_point": s == restart,
        }
        for s in sequences
    ]
    table = [["sequence", "ranks", "all ranks"]]
    for item in summary:
        mark = "yes  <- restart point" if item["restart_point"] else ("yes" if item["all_ranks"] else "no")
        table.append([str(item["sequence"]), ",".join(map(str, item["ranks"])), mark])
    head = f"{world} ranks; newest row every rank has: {restart if restart is not None else 'none'}"
    return summary, head + "\n" + format_table(table)


def cmd_ls(args: argparse.Namespace) -> int:
    if args.plot is not None:
        from ._timeline import PlotError, check_plot_target

        try:
            check_plot_target(args.plot)  # before any work: a wrong name or a missing extra
        except PlotError as exc:
            raise UsageError(str(exc)) from None
    report: list[dict[str, Any]] = []
    blocks: list[str] = []
    stores = _rank_stores(args)
    scans = [(store.location, scan_rows(store)) for store in stores]
    leftovers = [_leftovers(store) for store in stores]
    summary, summary_text = _rank_summary(scans)
    if summary_text:
        blocks.append(summary_text)
    any_damaged = False
    for (rank_path, scan), leftover in zip(scans, leftovers, strict=True):
        rows: list[dict[str, Any]] = []
        damaged = [{"row": p.row, "file": p.file, "reason": p.reason} for p in scan.problems]
        for row in scan.rows:
            try:
                rows.append(_row_summary(len(rows), row))
            except CheckpointCorruptError as exc:  # a whole row whose catalog record is not
                damaged.append({"row": str(row.path), "file": exc.file, "reason": str(exc)})
        any_damaged = any_damaged or bool(damaged)
        report.append({"path": str(rank_path), "rows": rows, "damaged": damaged, "leftovers": leftover})
        # Iterator checkpoints (restartable.iterators) key their rows by step:
        # the step column replaces lead_time and write_count, which they do not use.
        by_step = bool(rows) and all(r["step"] is not None for r in rows)
        if by_step:
            table = [["row", "sequence", "step", "metadata", "bytes", "saved_at", "commit_id"]]
            for r in rows:
                table.append(
                    [
                        str(r["row"]),
                        str(r["sequence"]),
                        str(r["step"]),
                        _short_metadata(r["metadata"]),
                        str(r["bytes"]),
                        r["saved_at"][:19],
                        r["commit_id"],
                    ]
                )
        else:
            table = [
                ["row", "sequence", "lead_time", "write_count", "level", "states", "bytes", "saved_at", "commit_id"]
            ]
            for r in rows:
                table.append(
                    [
                        str(r["row"]),
                        str(r["sequence"]),
                        str(r["lead_time"] if r["lead_time"] is not None else "-"),
                        str(r["write_count"]),
                        str(r["level"]),
                        str(len(r["states"])),
                        str(r["bytes"]),
                        r["saved_at"][:19],
                        r["commit_id"],
                    ]
                )
        text = f"{rank_path}: {len(rows)} row(s)"
        if rows:
            text += "\n" + format_table(table)
        for d in damaged:
            text += f"\n  DAMAGED {d['reason']}"
        for item in leftover:
            owner = f" (row {item['commit_id']})" if item["commit_id"] else ""
            text += f"\n  LEFTOVER {item['path']}: {item['kind']}{owner}; `restartable gc` removes it"
        blocks.append(text)
    if summary:
        flags = {item["sequence"]: item for item in summary}
        for block in report:
            for row in block["rows"]:
                row["all_ranks"] = flags[row["sequence"]]["all_ranks"]
                row["restart_point"] = flags[row["sequence"]]["restart_point"]
    if args.plot is not None:
        from ._timeline import timeline_from_scans, write_plot

        scanned = [(store, scan) for store, (_, scan) in zip(stores, scans, strict=True)]
        data = timeline_from_scans(
            [
                (store, scan, [i["path"] for i in found if i["kind"] == "interrupted commit"])
                for (store, scan), found in zip(scanned, leftovers, strict=True)
            ]
        )
        write_plot(data, args.plot)
        blocks.append(f"timeline written to {args.plot}")
    _emit(args, report, "\n\n".join(blocks))
    return EXIT_DAMAGED if any_damaged else EXIT_OK


def _short_metadata(metadata: Any) -> str:
    if not metadata:
        return "-"
    text = " ".join(f"{key}={value}" for key, value in metadata.items())
    return text if len(text) <= 40 else text[:37] + "..."


def _find_row(store: RowStore, selector: str) -> str:
    """The name of the row ``selector`` names: a commit id, or an index among the whole rows."""
    for _, name in store.list_rows():
        if name == selector:
            return name
    try:
        index = int(selector)
    except ValueError:
        raise UsageError(f"{selector!r} is neither a row index nor a commit id in {store}") from None
    # Indexes count whole rows, as the catalog does.
    whole = scan_rows(store).rows
    try:
        return whole[index].name
    except IndexError:
        raise UsageError(f"row {index} is out of range: {store} has {len(whole)} whole row(s)") from None


def cmd_show(args: argparse.Namespace) -> int:
    ranks = _rank_stores(args)
    store = ranks[0] if args.rank is None else _store(args).child(rank_folder_name(args.rank))
    row = open_row(store, _find_row(store, args.row))
    rank_path = store.location
    body = row.body
    arrays = row.arrays
    packed = Counter(file for file, entry in zip(arrays.files, arrays.entries, strict=True) if entry is not None)
    payload = {
        **_row_summary(0, row),
        "path": str(row.path),
        "format_version": body.get("format_version"),
        "library_version": body.get("library_version"),
        "states": [
            {"id": s["id"], "schema": s["schema"], "level": s["level"], "value": codec.describe(s["value"])}
            for s in body["states"]
        ],
        "files": row.files,
        # How many arrays each pack holds (format 2 rows; see restartable.store.packs).
        "packed_arrays": packed,
    }
    payload.pop("row")
    lines = [
        f"row {row.commit_id} (sequence {row.sequence}) of {rank_path}",
        f"saved_at: {body['saved_at']}  level: {body['level']}  write_count: {body['write_count']}",
        *([f"step: {body['step']}"] if body.get("step") is not None else []),
        "metadata:",
        *(f"  {k}: {v}" for k, v in payload["metadata"].items()),
        "states:",
    ]
    for state in payload["states"]:
        schema = f"schema {state['schema'][:12]}, " if state["schema"] else ""
        lines.append(f"  {state['id']} ({schema}level {state['level']})")
        value = state["value"]
        if isinstance(value, dict):
            lines.extend(f"    {k}: {v}" for k, v in value.items() if k != "__dataclass__")
    lines.append("files:")
    lines.extend(
        f"  {f['name']}  {f['size']} bytes  {f['checksum']}"
        + (f"  (pack of {packed[f['name']]} array{'s' * (packed[f['name']] != 1)})" if f["name"] in packed else "")
        for f in row.files
    )
    _emit(args, payload, "\n".join(lines))
    return EXIT_OK


def _verify_targets(args: argparse.Namespace) -> list[tuple[str, list[Problem]]]:
    """(row, problems) for every row of every rank, damaged manifests included."""
    return [
        (str(store.row_path(name)), verify_row(store, name))
        for store in _rank_stores(args)
        for _, name in store.list_rows()
    ]


def cmd_verify(args: argparse.Namespace) -> int:
    report, lines, damaged = [], [], 0
    for row_path, problems in _verify_targets(args):
        damaged += bool(problems)
        report.append({"row": str(row_path), "ok": not problems, "problems": [_problem(p) for p in problems]})
        if problems:
            lines.append(f"DAMAGED {row_path}")
            lines.extend(f"  {p.file or p.row}: {p.reason}" for p in problems)
        elif not args.quiet:
            lines.append(f"ok      {row_path}")
    lines.append(f"{len(report)} row(s) checked, {damaged} damaged")
    _emit(args, {"rows": report, "checked": len(report), "damaged": damaged}, "\n".join(lines))
    return EXIT_DAMAGED if damaged else EXIT_OK


def _problem(problem: Problem) -> dict[str, Any]:
    return {"file": problem.file, "reason": problem.reason}


def cmd_gc(args: argparse.Namespace) -> int:
    removed: list[str] = []
    for store in _rank_stores(args):
        lock = store.exclusion()
        lock.acquire()  # a running writer makes this raise CheckpointLockedError
        try:
            removed.extend(clean_leftovers(store, warn=False, dry_run=args.dry_run))
            if not args.dry_run:
                _check_removed(store)
            for _, name in store.list_rows():
                try:
                    listed = {f["name"] for f in open_row(store, name).files} | {MANIFEST_NAME}
                except CheckpointCorruptError:
                    continue  # damaged rows are left for the user to inspect
                unlisted = sorted(store.row_files(name) - listed)
                removed.extend(store.file_location(name, file) for file in unlisted)
                if unlisted and not args.dry_run:
                    store.remove_files(name, unlisted)
        finally:
            lock.release()
    verb = "would remove" if args.dry_run else "removed"
    text = "\n".join([*(f"{verb} {p}" for p in removed), f"{verb} {len(removed)} item(s)"])
    _emit(args, {"removed": removed, "dry_run": args.dry_run}, text)
    return EXIT_OK


def _check_removed(store: RowStore) -> None:
    """Raise if leftovers are still there after removing them (the file system refused quietly)."""
    interrupted, retired = store.clean_leftovers(dry_run=True)
    remaining = interrupted + retired
    if remaining:
        others = f" and {len(remaining) - 1} more" if len(remaining) > 1 else ""
        raise OSError(
            errno.EACCES,
            f"could not remove {remaining[0]}{others} (check that the store is writable: "
            "permissions, a read-only mount)",
        )


def _sync_command(args: argparse.Namespace, direction: str) -> int:
    from .remote.sync import pull, push

    source, destination = args.source, args.destination
    remote = destination if direction == "push" else source
    local = source if direction == "push" else destination
    if not is_url(remote):
        raise UsageError(f"{remote!r} is not a URL (expected protocol://bucket/prefix)")
    if is_url(local):
        raise UsageError(f"{local!r} must be a local directory, not a URL")
    try:
        # Progress on stderr (a bar on a terminal, a line per row in a log);
        # stdout keeps only the report.
        verbose = not args.quiet
        if direction == "push":
            report = push(Path(local), remote, storage_options=args.storage_options, verbose=verbose)
        else:
            report = pull(
                remote, Path(local), storage_options=args.storage_options, verify=args.verify, verbose=verbose
            )
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    lines = [f"copied  {row}" for row in report.copied]
    lines += [f"repaired {row} (the local copy was damaged)" for row in report.repaired]
    lines += [f"DAMAGED {row}: {reason}" for row, reason in report.damaged]
    repaired = f", {len(report.repaired)} repaired" if report.repaired else ""
    lines.append(
        f"{len(report.copied)} row(s) copied ({report.bytes_copied} bytes), {len(report.present)} already present"
        f"{repaired}, {len(report.damaged)} damaged and skipped"
    )
    if args.quiet and not args.json:
        lines = [line for line in lines if line.startswith("DAMAGED ")]
        if not lines:
            return EXIT_OK  # quiet: nothing at all to say
    _emit(args, report.as_dict(), "\n".join(lines))
    return EXIT_DAMAGED if report.damaged else EXIT_OK


def cmd_import_earth2studio(args: argparse.Namespace) -> int:
    from .earth2studio.migrate import import_earth2studio

    try:
        report = import_earth2studio(args.source, args.destination)
    except (FileNotFoundError, FileExistsError) as exc:
        raise UsageError(str(exc)) from None
    lines = [f"imported {row}" for row in report.imported]
    lines += [f"DAMAGED  {row}: {reason}" for row, reason in report.damaged]
    lines.append(
        f"{len(report.imported)} row(s) imported into {args.destination}, {len(report.damaged)} damaged and skipped"
    )
    _emit(args, report.as_dict(), "\n".join(lines))
    return EXIT_DAMAGED if report.damaged else EXIT_OK


def _storage_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="restartable",
        description="Inspect, verify and clean restartable checkpoints.",
        epilog=(
            "Exit codes: 0 ok, 1 damage found, 2 usage error, 3 checkpoint locked by a writer, 4 object store failed, "
            "5 local file system refused."
        ),
    )
    parser.add_argument("--version", action="version", version=f"restartable {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.add_argument(
            "-o",
            "--storage-option",
            dest="storage_option",
            action="append",
            type=_storage_option,
            default=[],
            metavar="KEY=VALUE",
            help="fsspec option for URLs, repeatable (VALUE parsed as JSON when it can be)",
        )

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "path",
            type=location,
            metavar="PATH",
            help="checkpoint directory (the one holding commits/ or rank_* folders)",
        )
        options(p)
        return p

    ls = add("ls", "List the committed rows of a checkpoint as a table, with damaged rows and leftovers.")
    ls.add_argument(
        "--plot",
        metavar="FILE",
        default=None,
        help="also draw the rows on a timeline, per rank: FILE.html (no dependency) or FILE.png "
        "(needs matplotlib: pip install 'restartable[plot]')",
    )
    ls.set_defaults(func=cmd_ls)
    show = add("show", "Show the metadata, states and files of one row.")
    show.add_argument("row", metavar="ROW", help="row index (negative counts from the newest) or commit id")
    show.add_argument("--rank", type=int, default=None, help="rank folder to read (default: the first)")
    show.set_defaults(func=cmd_show)
    verify = add("verify", "Check every file of every row against its checksum.")
    verify.add_argument("-q", "--quiet", action="store_true", help="print damaged rows only")
    verify.set_defaults(func=cmd_verify)
    gc = add("gc", "Remove leftovers of interrupted commits and files no manifest references.")
    gc.add_argument("-n", "--dry-run", action="store_true", help="list what would be removed, remove nothing")
    gc.set_defaults(func=cmd_gc)
    for direction, source, destination, what in (
        (
            "push",
            ("LOCAL", "local checkpoint directory"),
            ("URL", "object-store prefix, e.g. s3://bucket/run"),
            "Upload the committed rows of a local checkpoint that the URL lacks",
        ),
        (
            "pull",
            ("URL", "object-store prefix, e.g. s3://bucket/run"),
            ("LOCAL", "local checkpoint directory (created if needed)"),
            "Download the committed rows under a URL that the local checkpoint lacks",
        ),
    ):
        sync = sub.add_parser(
            direction,
            help=what.split(" that ")[0] + ".",
            description=f"{what}, verifying every checksum; damaged rows are reported and skipped.",
        )
        sync.add_argument("source", metavar=source[0], help=source[1])
        sync.add_argument("destination", metavar=destination[0], help=destination[1])
        sync.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            help="no progress and no report, only damaged rows (the exit status says the rest)",
        )
        if direction == "pull":
            sync.add_argument(
                "--verify",
                action="store_true",
                help="also check every checksum of the rows LOCAL already has (reads them all); "
                "damaged local rows are replaced by the remote copy either way",
            )
        options(sync)
        sync.set_defaults(func=lambda args, direction=direction: _sync_command(args, direction))
    migrate = sub.add_parser(
        "import-earth2studio",
        help="Convert an earth2studio checkpoint store into a restartable store.",
        description="Convert an earth2studio checkpoint store (catalog.json, commits/, states/) into a new "
        "restartable store, checking each row; damaged rows are reported and skipped (exit 1).",
    )
    migrate.add_argument("source", type=Path, metavar="SRC", help="earth2studio checkpoint directory")
    migrate.add_argument("destination", type=Path, metavar="DEST", help="new restartable checkpoint directory")
    migrate.add_argument("--json", action="store_true", help="print machine-readable JSON")
    migrate.set_defaults(func=cmd_import_earth2studio)
    # The demo takes no PATH, so it is not made with add(). Its module imports
    # only numpy here; torch, xarray and zarr are imported when it runs.
    from . import demo

    demo_parser = sub.add_parser(
        "demo",
        help=(
            "Kill an ensemble forecast with SIGKILL, resume it, and check it bit for bit against an uninterrupted run."
        ),
        description=demo.DESCRIPTION,
        epilog=demo.EPILOG,
    )
    demo.add_arguments(demo_parser).set_defaults(func=demo.run_from_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and hasattr(signal, "SIGPIPE"):
        # `restartable ls | head`: stop quietly when the reader goes away.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args.storage_options = dict(getattr(args, "storage_option", []) or [])
    try:
        code: int = args.func(args)
        return code
    except (UsageError, EnvironmentValueError) as exc:
        return _fail(args, str(exc), EXIT_USAGE)
    except MissingExtraError as exc:  # an optional dependency of this command (fsspec, s3fs, torch)
        return _fail(args, str(exc), EXIT_USAGE)
    except CheckpointLockedError as exc:
        return _fail(args, str(exc), EXIT_LOCKED)
    except CheckpointCorruptError as exc:
        return _fail(args, str(exc), EXIT_DAMAGED)
    except CheckpointRemoteError as exc:
        return _fail(args, str(exc), EXIT_REMOTE)
    except (OSError, CheckpointWriteError) as exc:
        return _fail(args, _io_message(exc, args), EXIT_IO)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """Report a failure as one line on stderr; return its exit code."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"restartable {args.command}: error: {escaped(line)}", file=sys.stderr)
    return code


# What to check when the file system refuses, by errno.
_IO_HINTS = {
    errno.EACCES: "check the permissions (write access is needed to change the store)",
    errno.EPERM: "check the permissions (write access is needed to change the store)",
    errno.EROFS: "the file system is mounted read-only",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
}


def _io_message(exc: BaseException, args: argparse.Namespace) -> str:
    """A file system refusal as ``FILE: reason; what to check``."""
    if not isinstance(exc, OSError) or not exc.strerror:
        return str(exc)
    if exc.filename is None:
        return exc.strerror
    name = os.fsdecode(exc.filename)
    base = getattr(args, "path", None)
    # Lower layers name files relative to the folder they opened (dir_fd).
    where = f" (in {base})" if base and not os.path.isabs(name) and not is_url(name) else ""
    hint = _IO_HINTS.get(exc.errno or 0)
    return f"{name}{where}: {exc.strerror}" + (f"; {hint}" if hint else "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
