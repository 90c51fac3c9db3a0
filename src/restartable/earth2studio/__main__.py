"""``python -m restartable.earth2studio [--no-workflows] SCRIPT [ARGS] | -m MODULE [ARGS]``.

Runs an unchanged earth2studio script (or module) with the bridge installed,
exactly as if its first line were ``restartable.earth2studio.install()``.
Options of the launcher come before SCRIPT (or ``-m MODULE``); everything
after it is the script's own, ``--help`` included, as with ``python``.
"""

from __future__ import annotations

import runpy
import sys

from . import install

USAGE = """usage: python -m restartable.earth2studio [-h] [--no-workflows] (SCRIPT | -m MODULE) [ARGS ...]

Run an earth2studio script with its checkpoints and workflows on restartable's engine.

options (before SCRIPT or -m MODULE):
  -h, --help       show this help and exit
  --no-workflows   keep earth2studio's own run.deterministic/diagnostic/ensemble

Everything after SCRIPT (or -m MODULE) is passed to it unchanged.
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    workflows = True
    while args and args[0].startswith("-") and args[0] != "-m":
        option = args.pop(0)
        if option in ("-h", "--help"):
            print(USAGE, end="")
            return 0
        if option == "--no-workflows":
            workflows = False
            continue
        print(USAGE, end="", file=sys.stderr)
        print(f"python -m restartable.earth2studio: error: unknown option {option!r}", file=sys.stderr)
        return 2
    if not args or (args[0] == "-m" and len(args) < 2):
        print(USAGE, end="", file=sys.stderr)
        print("python -m restartable.earth2studio: error: a SCRIPT or -m MODULE is required", file=sys.stderr)
        return 2
    install(workflows=workflows)
    if args[0] == "-m":
        module, rest = args[1], args[2:]
        sys.argv = [module, *rest]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, rest = args[0], args[1:]
        sys.argv = [script, *rest]
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
