"""A production device (config.json ``"production": true``) locks its REPL before running and
resets on a crash instead of stopping at the prompt (firmware/main.py ``start``), on the real
MicroPython VM; a development device keeps both (issue 14)."""
from __future__ import annotations

SETUP = """
import json
from firmware import config as C, main as M
from sim.hardware.board import SimBoard, SimReset
import os
try:
    os.mkdir('/flash')
except OSError:
    pass
board = SimBoard(storage_root='/flash', unix_time=1795430400)
cfg = C.create_identity(board)
def crashing_run(b, cfg=None, **kw):
    raise ValueError('sensor bus exploded')
M.run = crashing_run
def boot(production):
    data = dict(cfg.data)
    data['production'] = production
    C.save(board, data)
    try:
        M.start(board)
    except SimReset:
        return 'reset'
    except ValueError as e:
        return 'raised ' + str(e)
    return 'returned'
"""


def test_production_config_locks_the_repl_and_resets_on_a_crash(vm):
    vm.exec(SETUP)
    assert vm.eval("[boot(False), board.repl_locked, board.resets]") == ["raised sensor bus exploded", False, 0]
    assert vm.eval("[boot(True), board.repl_locked, board.resets]") == ["reset", True, 1]
    assert "crash, resetting" in vm.eval("open('/flash/log.txt').read()")


def test_production_must_be_a_boolean(vm):
    vm.exec(SETUP)
    assert vm.eval("C.load(board).production") is False
    vm.exec("d = dict(cfg.data)\nd['production'] = 'yes'\n"
            "try:\n    C.save(board, d)\n    err = ''\nexcept C.ConfigError as e:\n    err = str(e)\n")
    assert vm.eval("err") == "production: must be true or false"
