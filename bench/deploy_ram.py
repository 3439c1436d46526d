"""RAM cost of the firmware's code by deployment route, on the virtual device (the real MicroPython,
WebAssembly build): heap taken by ``import firmware.main`` (gc.mem_alloc() around it, after a
soft reboot; the board and the boot step are already loaded in both cases) when the firmware is

- ``py``: source files (what the virtual device's /lib holds): compiled on the device at import;
- ``mpy``: the ``.mpy`` files ``nabd deploy`` copies: bytecode loaded into the heap at import.

Frozen modules (``hardware/esp32/manifest.py``) and ROMFS keep bytecode in flash and cannot be
measured here: the npm build has neither the nabd modules frozen nor ``vfs.VfsRom``. The
``mpy_bytes`` figure (the size of the .mpy files) bounds what they save over ``mpy``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from host.commands.deploy import MEASURE, deploy
from host.device import Device
from sim.virtual_device.serial_bridge import VirtualDevice


def run(outdir) -> dict:
    import threading

    with tempfile.TemporaryDirectory(prefix="nabd-bench-deploy-") as tmp:
        state = Path(tmp) / "flash"
        dev = VirtualDevice(state)
        port = dev.start()
        t = threading.Thread(target=dev.serve, daemon=True)
        t.start()
        try:
            with Device(port, timeout=60) as d:
                d.soft_reset(timeout=60)
                py = d.call("_o", setup=MEASURE, timeout=60)
            out = deploy(port, say=lambda s: None)
        finally:
            dev.stop()
            t.join(30)
        mpy_bytes = sum(f.stat().st_size for f in (state / "firmware").rglob("*.mpy"))
        shutil.rmtree(state, ignore_errors=True)
    return {"import_heap_bytes_py": py["code_bytes"], "import_heap_bytes_mpy": out["code_bytes"],
            "mpy_files_bytes": mpy_bytes, "mpy_saves_bytes": py["code_bytes"] - out["code_bytes"]}
