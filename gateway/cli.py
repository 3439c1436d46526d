"""``nabd-gateway``: serve, and the administrators' commands.

The commands are listed in ``_COMMANDS`` below: name -> the module in ``gateway/commands/`` whose
``register(subparsers)`` adds it and sets ``func`` (parsed arguments -> exit code); the work is done
by the gateway's library modules (``gateway.admin``, ``gateway.observatory``, ...). Exit codes, the
error type and ``--json`` are shared with ``nabd`` through ``nabd_cli`` (0 ok, 1 check failed,
2 usage, 3 connection, 4 data).
"""
from __future__ import annotations

import argparse
import sys

from nabd_cli import CommandError  # noqa: F401  (re-exported: command modules import it from here)
from nabd_cli import build_parser as _build
from nabd_cli import main as _main

# One line per command, in the order --help lists them.
_COMMANDS = {
    "init": "gateway.commands.init",
    "serve": "gateway.commands.serve",
    "devices": "gateway.commands.devices",
    "quarantine": "gateway.commands.quarantine",
    "observatory": "gateway.commands.observatory",
    "users": "gateway.commands.users",
}

DESCRIPTION = ("nabd gateway: receives signed readings from the broker, keeps the records, serves them "
               "as FHIR, and reports device counts to the observatory.")


def build_parser() -> argparse.ArgumentParser:
    return _build("nabd-gateway", DESCRIPTION, _COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return _main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
