"""In-VM helper of tests/firmware/test_comms_config.py (exec'd in the MicroPython VM's
``__main__``): the shared test board on /flash (device id nabd-240ac400002a) and ``why(data)``,
which writes ``data`` as config.json and says why it does not load ("ok" when it does)."""
import json

from firmware import config as C
from firmware import reading as R  # noqa: F401  (the tests build payloads with R)
from firmware.log import Log  # noqa: F401  (the tests make logs)
from tests.firmware._commsboard import CommsBoard

board = CommsBoard("/flash", 1795430400, seed=0x2A)


def why(data):
    with open("/flash/config.json", "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    try:
        C.load(board)
        return "ok"
    except C.ConfigError as e:
        return str(e)
