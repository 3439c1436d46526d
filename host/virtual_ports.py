"""The registry of virtual serial ports, so that ``nabd ports`` lists a virtual device or a
virtual bootloader the way it lists a board on USB.

The registry is a folder: ``$NABD_VIRTUAL_PORTS`` when set, else
``$XDG_RUNTIME_DIR/nabd-virtual-ports``, else ``/tmp/nabd-virtual-ports-<uid>``. Each running
virtual port writes one file ``<pid>.json`` there::

    {"port": "/dev/pts/5", "kind": "virtual device", "pid": 4242, "description": "..."}

and removes it when it stops. An entry whose process is gone or whose port no longer exists is
stale (the process was killed) and is ignored and removed by ``entries()``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def folder() -> Path:
    env = os.environ.get("NABD_VIRTUAL_PORTS")
    if env:
        return Path(env)
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run and os.path.isdir(run):
        return Path(run) / "nabd-virtual-ports"
    return Path(f"/tmp/nabd-virtual-ports-{os.getuid()}")


def register(port: str, kind: str, description: str = "", **extra) -> Path:
    """Record ``port`` (this process's); returns the entry's file (give it to ``unregister``).
    ``extra``: more fields (a virtual device gives ``state``, its flash folder, so that
    ``nabd calibrate`` can drive its reference instruments)."""
    d = folder()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / f"{os.getpid()}-{Path(port).name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"port": port, "kind": kind, "pid": os.getpid(), "description": description,
                               **extra}))
    os.replace(tmp, path)
    return path


def unregister(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def lookup(port: str) -> dict | None:
    """The live entry of ``port`` (compared by real path), or None: not a virtual port."""
    real = os.path.realpath(port)
    for e in entries():
        if os.path.realpath(e["port"]) == real:
            return e
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def entries() -> list[dict]:
    """The live entries, sorted by port; stale ones are deleted."""
    d = folder()
    out = []
    if not d.is_dir():
        return out
    for f in sorted(d.glob("*.json")):
        try:
            e = json.loads(f.read_text())
            live = _alive(int(e["pid"])) and os.path.exists(e["port"])
        except (OSError, ValueError, KeyError, TypeError):
            live, e = False, None
        if live:
            out.append(e)
        else:
            unregister(f)
    return sorted(out, key=lambda e: e["port"])
