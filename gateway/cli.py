"""``nabd-gateway``: serve, and the administrators' commands.

Each subcommand group lives in ``gateway/commands/<name>.py`` and exposes ``register(subparsers)``;
the parser's ``func`` returns the exit code (0 ok, 1 failure, 2 usage, 3 connection, 4 data).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


class CommandError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nabd-gateway", description="nabd gateway: ingest, records, FHIR, observatory")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from gateway import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"gateway.commands.{info.name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as e:
        print(f"nabd-gateway: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
