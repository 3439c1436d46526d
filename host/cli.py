"""``nabd``: the technicians' command line, in the manner of esptool and mpremote.

One command, clear subcommands. Each subcommand lives in ``host/commands/<name>.py`` and exposes
``register(subparsers)``; it sets ``func`` on its parser, which returns the exit code.

Exit codes scripts can trust:
  0 success; 1 a check or measurement failed; 2 usage error; 3 device or connection error;
  4 data error (bad input file, corrupt record); 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DEVICE, EXIT_DATA = 0, 1, 2, 3, 4


class CommandError(Exception):
    """An expected failure with a message for the user and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAIL):
        super().__init__(message)
        self.code = code


def add_common(p: argparse.ArgumentParser, port: bool = True) -> None:
    """Options every subcommand accepts."""
    p.add_argument("--json", action="store_true", help="machine-readable output")
    if port:
        p.add_argument("--port", "-p", default=None,
                       help="serial port of the device (e.g. /dev/ttyUSB0, a virtual device's /dev/pts/N)")


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nabd", description="nabd device tools: flash, deploy, provision, "
                                     "calibrate, test, monitor, analyze, simulate.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from host import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"host.commands.{info.name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except CommandError as e:
        if getattr(args, "json", False):
            emit_json({"ok": False, "error": str(e)})
        else:
            print(f"nabd: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
