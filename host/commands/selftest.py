"""``nabd selftest``: the sensor self-test of ``firmware/selftest.py``.

    nabd selftest --virtual [--fault NAME]... [--json]   # firmware in the MicroPython VM, simulated board
    nabd selftest --port /dev/ttyUSB0 [--json]           # a real board with the firmware deployed (mpremote)

Exit 0 when every check passes, 1 when one fails, 2 on a usage error (an unknown fault name lists
the valid ones), 3 when the VM or the device cannot be reached.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from host.cli import add_common
from nabd_cli import EXIT_DEVICE, EXIT_FAIL, EXIT_OK, EXIT_USAGE, CommandError, emit_json

MARK = "\x1e"  # separates the result line from anything the firmware printed


def valid_faults() -> tuple[str, ...]:
    from sim.hardware.board import FAULTS

    return FAULTS


def check_faults(faults: list[str]) -> None:
    valid = valid_faults()
    bad = [f for f in faults if f not in valid]
    if bad:
        raise CommandError(f"unknown fault {', '.join(bad)}; valid faults: {', '.join(valid)}", EXIT_USAGE)


def vm_setup_code(faults: list[str], scenario: str = "None", var: str = "board") -> str:
    """MicroPython source that builds the simulated board with ``faults`` in the VM."""
    return (f"from sim.hardware.board import SimBoard\n"
            f"{var} = SimBoard(scenario={scenario}, faults={json.dumps(list(faults))})\n")


def run_in_vm(vm, faults: list[str], board_var: str = "board", scenario: str = "None") -> list[dict]:
    """Run the firmware self-test inside an open MicroPythonVM on a fresh SimBoard (kept in the VM
    as ``board_var``; ``scenario`` is MicroPython source for the scenario object)."""
    vm.exec(vm_setup_code(faults, scenario=scenario, var=board_var)
            + f"from firmware import selftest\n_st = selftest.run({board_var})\n")
    return [{"name": n, "ok": bool(ok), "detail": d} for n, ok, d in vm.eval("[list(r) for r in _st]")]


def run_virtual(faults: list[str]) -> list[dict]:
    from host.mpvm import MicroPythonError, MicroPythonVM, VMUnavailable

    try:
        with MicroPythonVM() as vm:
            return run_in_vm(vm, faults)
    except VMUnavailable as e:
        raise CommandError(str(e), EXIT_DEVICE) from None
    except MicroPythonError as e:
        raise CommandError(f"the self-test crashed in MicroPython ({e.type}):\n{e.traceback}", EXIT_DEVICE) from None


DEVICE_CODE = (
    "import json\n"
    "from firmware.boards import current\n"
    "_b = current()\n"
    "from firmware import selftest\n"
    "print('" + "\\x1e" + "' + json.dumps([list(r) for r in selftest.run(_b)]))\n"
)


def mpremote_bin() -> str:
    cand = Path(sys.executable).with_name("mpremote")
    if cand.exists():
        return str(cand)
    found = shutil.which("mpremote")
    if not found:
        raise CommandError("mpremote is not installed: run `make setup`", EXIT_DEVICE)
    return found


def run_device(port: str, timeout: float = 90.0) -> list[dict]:
    """Run the self-test on a real board through ``mpremote connect PORT exec`` (the firmware must
    be deployed on it)."""
    cmd = [mpremote_bin(), "connect", port, "exec", DEVICE_CODE]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CommandError(f"no answer from the device on {port} within {timeout:.0f} s", EXIT_DEVICE) from None
    out = proc.stdout
    if proc.returncode != 0 or MARK not in out:
        tail = (proc.stderr or out).strip().splitlines()[-8:]
        raise CommandError(f"self-test did not run on {port}: " + " | ".join(tail), EXIT_DEVICE)
    rows = json.loads(out.rsplit(MARK, 1)[1].splitlines()[0])
    return [{"name": n, "ok": bool(ok), "detail": d} for n, ok, d in rows]


def print_table(checks: list[dict], board: str, faults: list[str]) -> None:
    head = f"nabd selftest on {board}"
    if faults:
        head += " with injected fault" + ("s " if len(faults) > 1 else " ") + ", ".join(faults)
    print(head)
    width = max(len(c["name"]) for c in checks)
    for c in checks:
        print(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']:<{width}}  {c['detail']}")
    failed = sum(not c["ok"] for c in checks)
    print(f"result: {'PASS' if not failed else 'FAIL'} ({len(checks) - failed} of {len(checks)} checks passed)")


def cmd_selftest(args) -> int:
    faults = list(args.fault or [])
    check_faults(faults)
    if args.virtual:
        checks = run_virtual(faults)
        board = "sim"
    else:
        if faults:
            raise CommandError("--fault injects faults into the simulated board: use it with --virtual", EXIT_USAGE)
        if not args.port:
            raise CommandError("give --virtual (simulated board) or --port PORT (a real board)", EXIT_USAGE)
        checks = run_device(args.port)
        board = "esp32"
    ok = all(c["ok"] for c in checks)
    if args.json:
        emit_json({"ok": ok, "checks": checks, "faults": faults, "board": board})
    else:
        print_table(checks, board, faults)
    return EXIT_OK if ok else EXIT_FAIL


def register(sub) -> None:
    p = sub.add_parser("selftest", help="sensor self-test (part IDs, PEC, plausibility, LED order, FIFO rate, overflow)",
                       description="Run the firmware's sensor self-test on a real board (--port) or on "
                       "the simulated board in the MicroPython VM (--virtual). Exit 0 when every check "
                       "passes, 1 when one fails, 3 when the board cannot be reached.")
    add_common(p)
    p.add_argument("--virtual", action="store_true",
                   help="run the firmware in the MicroPython VM on the simulated board")
    p.add_argument("--fault", action="append", metavar="NAME",
                   help="inject a simulated fault (repeatable); one of: " + ", ".join(valid_faults()))
    p.set_defaults(func=cmd_selftest)
