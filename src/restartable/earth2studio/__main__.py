"""``python -m restartable.earth2studio SCRIPT [ARGS]``: run an unchanged earth2studio script on restartable.

The bridge is installed before the script (or ``-m MODULE``) runs, exactly
as if its first line were ``restartable.earth2studio.install()``.
"""

from __future__ import annotations

import argparse
import runpy
import sys

from . import install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m restartable.earth2studio",
        description="Run an earth2studio script with its checkpoints and workflows on restartable's engine.",
        epilog="Everything after SCRIPT (or -m MODULE) is passed to it unchanged.",
    )
    parser.add_argument("--no-workflows", action="store_true", help="keep earth2studio's own run.deterministic/diagnostic/ensemble")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("-m", dest="module", metavar="MODULE", help="run a module, like python -m")
    target.add_argument("script", nargs="?", metavar="SCRIPT", help="the script to run")
    args, rest = parser.parse_known_args(argv)
    install(workflows=not args.no_workflows)
    if args.module:
        sys.argv = [args.module, *rest]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [args.script, *rest]
        runpy.run_path(args.script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
