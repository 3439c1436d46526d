"""``nabd``: the technicians' command line, in the manner of esptool and mpremote.

The commands are listed in ``_COMMANDS`` below: name -> the module in ``host/commands/`` whose
``register(subparsers)`` adds it and sets ``func`` (parsed arguments -> exit code). The work itself
is done by plain functions of those modules (``analyze.read_channels``, ``sim.run_device``, ...)
that raise ``CommandError``; this file only maps outcomes to exit codes. Exit codes, the error type
and ``--json`` are shared with ``nabd-gateway`` through ``nabd_cli``:
  0 success; 1 a check or measurement failed; 2 usage error; 3 device or connection error;
  4 data error (bad input file, corrupt record); 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys

from nabd_cli import (  # noqa: F401  (re-exported: command modules import them from here)
    EXIT_DATA,
    EXIT_DEVICE,
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    add_json,
    emit_json,
)
from nabd_cli import build_parser as _build
from nabd_cli import main as _main

# One line per command, in the order --help lists them.
_COMMANDS = {
    "ports": "host.commands.ports",
    "flash": "host.commands.flash",
    "deploy": "host.commands.deploy",
    "info": "host.commands.info",
    "provision": "host.commands.provision",
    "calibrate": "host.commands.calibrate",
    "monitor": "host.commands.monitor",
    "selftest": "host.commands.selftest",
    "analyze": "host.commands.analyze",
    "sim": "host.commands.sim",
    "demo": "host.commands.demo",
}

DESCRIPTION = ("nabd device tools: list ports, flash, deploy, provision and calibrate a device, read its state, monitor it, "
               "test the sensors, analyse recordings, run the virtual device and the demo.")


def add_common(p: argparse.ArgumentParser, port: bool = True) -> None:
    """Options every subcommand accepts."""
    add_json(p)
    if port:
        p.add_argument("--port", "-p", default=None,
                       help="serial port of the device (e.g. /dev/ttyUSB0, a virtual device's /dev/pts/N)")


def build_parser() -> argparse.ArgumentParser:
    return _build("nabd", DESCRIPTION, _COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return _main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
