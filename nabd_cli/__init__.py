"""What the two command lines, ``nabd`` (host/cli.py) and ``nabd-gateway`` (gateway/cli.py), share:
the exit codes, the one error type, JSON output and the main loop over a command table.

It lives in its own package so that neither CLI imports the other: the gateway runs on a server
without the host tools (serial ports, the MicroPython VM), and the host tools need none of the
gateway. It imports only the standard library.

Exit codes scripts can trust (README, docs/architecture.md "Exit codes"):
  0 success; 1 a check or measurement failed; 2 usage (bad option, missing or conflicting
  configuration); 3 device or connection (serial port, VM, broker, database, listening port);
  4 data (unreadable input file, corrupt record); 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import json
import socket
import sys
from collections.abc import Callable, Mapping, Sequence

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_DEVICE = 3
EXIT_DATA = 4
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """An expected failure: a one-line message for the user (what went wrong, and what to do) and
    the exit code. Commands raise it; ``main`` prints it (as JSON with ``--json``)."""

    def __init__(self, message: str, code: int = EXIT_FAIL):
        super().__init__(message)
        self.code = code
        self.usage = ""  # for errors argparse found: the failing parser's usage line
        self.prog = ""   # and its name ("nabd analyze"), which the message is prefixed with


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors raised as ``CommandError(..., EXIT_USAGE)`` instead of printed
    and exited, so that ``--json`` applies to them too, and help in plain words: a description
    taken from a module docstring loses its reST literal marks. Subparsers inherit the class."""

    def format_help(self) -> str:
        return super().format_help().replace("``", "")

    def error(self, message: str):  # type: ignore[override]
        e = CommandError(message, EXIT_USAGE)
        e.usage, e.prog = self.format_usage(), self.prog
        raise e


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output (one JSON object a line)")


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def why_unreachable(host: str, port: int, timeout: float = 3.0) -> str | None:
    """Why nothing accepts a TCP connection on ``host:port`` ("connection refused", "timed out"),
    or None when something does: for start-up errors that name the address and the cause."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return os_reason(e)


def os_reason(e: OSError) -> str:
    """An OSError as the few words a user reads ("address already in use"), without errno noise."""
    text = e.strerror or str(e) or type(e).__name__
    return text[:1].lower() + text[1:]


def version(dist: str = "nabd") -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _v

    try:
        return _v(dist)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser(prog: str, description: str, commands: Mapping[str, str]) -> ArgumentParser:
    """The parser of a CLI whose subcommands are ``commands``: name -> module whose
    ``register(subparsers)`` adds that subcommand (and sets ``func`` on it, which takes the parsed
    arguments and returns the exit code). Modules are imported here, not at the CLI's import, so a
    command module may import its CLI's helpers without an import cycle."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in commands.items():
        importlib.import_module(module).register(sub)
        if name not in sub.choices:
            raise RuntimeError(f"{module}.register() did not add the {name!r} command its table entry names")
    return parser


def report(prog: str, e: CommandError, as_json: bool) -> int:
    """Print a CommandError the way the user asked for output; returns its exit code."""
    if as_json:
        emit_json({"ok": False, "error": str(e), "exit": e.code})
    else:
        if e.usage:
            sys.stderr.write(e.usage)
        print(f"{e.prog or prog}: {e}", file=sys.stderr)
    return e.code


def main(parser: ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments), run the command, map its outcome to an
    exit code. Usage errors, too, come out as JSON when ``--json`` is among the arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in argv
    prog = parser.prog
    try:
        args = parser.parse_args(argv)
    except CommandError as e:
        return report(prog, e, want_json)
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else EXIT_OK
    func: Callable | None = getattr(args, "func", None)
    if func is None:
        if want_json:
            return report(prog, CommandError("give a command; --help lists them", EXIT_USAGE), True)
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args) or EXIT_OK)
    except CommandError as e:
        return report(prog, e, want_json or bool(getattr(args, "json", False)))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
