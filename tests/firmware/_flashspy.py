"""In-VM helper of tests/firmware/test_app_persistence.py (exec'd in the MicroPython VM): counts
``config.save`` calls (``saves``: the sorted settings names of each) and can make the flash full
(``flash_full(True)``: the temp file's write fails half-way with ENOSPC)."""
import errno
import json

from firmware import config

saves = []
_save = config.save


def counting_save(b, d):
    saves.append(sorted(d.get("settings", {})))
    return _save(b, d)


config.save = counting_save


class FullFile:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()

    def write(self, s):
        self.f.write(s[: len(s) // 2])
        raise OSError(errno.ENOSPC)


def full_open(path, mode="r"):
    f = open(path, mode)
    return FullFile(f) if path.endswith(".tmp") else f


def flash_full(on):
    if on:
        config.open = full_open
    else:
        del config.open


def stored():
    """The ``settings`` kept in /flash/config.json."""
    with open("/flash/config.json") as f:
        return json.load(f).get("settings")
