"""Run firmware on the real MicroPython interpreter (WebAssembly build under Node.js).

The VM is a child process (``host/mpvm.mjs``) that speaks one JSON line per request. Start-up
costs about 30 ms, so tests may use a fresh VM each. The repository's ``firmware/`` and
``sim/`` trees are copied into the VM's ``/lib`` so that code imports them by package path.

    with MicroPythonVM() as vm:
        vm.exec("import firmware.drivers.mlx90614")
        value = vm.eval("1 + 1")          # any JSON-serialisable MicroPython value
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NODE_MODULE = "@micropython/micropython-webassembly-pyscript"


class MicroPythonError(Exception):
    """A Python exception raised inside the MicroPython VM.

    ``type`` is the MicroPython exception class name, ``traceback`` its full text, ``out`` what the
    code printed before it failed.
    """

    def __init__(self, type_: str, traceback: str, out: str = ""):
        super().__init__(f"{type_} in MicroPython:\n{traceback}")
        self.type = type_
        self.traceback = traceback
        self.out = out


class VMUnavailable(RuntimeError):
    """Node.js or the MicroPython npm package is missing (run `make setup`)."""


def node_modules_dir() -> Path:
    return REPO / "node_modules"


def check_available() -> None:
    if shutil.which("node") is None:
        raise VMUnavailable("node is not installed: run `make setup`")
    if not (node_modules_dir() / NODE_MODULE / "micropython.mjs").exists():
        raise VMUnavailable(f"npm package {NODE_MODULE} is missing: run `make setup`")


class MicroPythonVM:
    """One MicroPython interpreter. ``heapsize`` in bytes (the ESP32 without PSRAM has ~100 KB free
    for Python; tests that measure memory set it small on purpose)."""

    def __init__(self, heapsize: int = 1024 * 1024, trees: tuple[str, ...] = ("firmware", "sim")):
        check_available()
        self.heapsize = heapsize
        self._proc = subprocess.Popen(
            ["node", str(REPO / "host" / "mpvm.mjs"), str(REPO), str(heapsize), ",".join(trees)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(REPO),
            env={**os.environ, "NODE_PATH": str(node_modules_dir())},
        )

    # -- transport ------------------------------------------------------------------------------
    def _request(self, **req) -> dict:
        proc = self._proc
        if proc.poll() is not None:
            raise RuntimeError(f"MicroPython VM exited ({proc.returncode}): {proc.stderr.read().decode(errors='replace')}")
        proc.stdin.write((json.dumps(req) + "\n").encode())
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read().decode(errors="replace")
            raise RuntimeError(f"MicroPython VM died: {err}")
        return json.loads(line)

    # -- code -----------------------------------------------------------------------------------
    def exec(self, code: str) -> str:
        """Run ``code`` in the VM's ``__main__``; return what it printed. Raise MicroPythonError."""
        rep = self._request(op="exec", code=code)
        if not rep["ok"]:
            raise MicroPythonError(rep.get("type", "?"), rep.get("error", ""), rep.get("out", ""))
        return rep["out"]

    def eval(self, expr: str):
        """Evaluate ``expr`` in the VM and return it decoded from JSON."""
        out = self.exec("import json as _j\nprint('\\x1e' + _j.dumps(" + expr + "))")
        return json.loads(out.rsplit("\x1e", 1)[1])

    # -- files ----------------------------------------------------------------------------------
    def write_file(self, path: str, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        rep = self._request(op="write", path=path, b64=base64.b64encode(data).decode())
        if not rep["ok"]:
            raise OSError(rep.get("error"))

    def read_file(self, path: str) -> bytes:
        rep = self._request(op="read", path=path)
        if not rep["ok"]:
            raise FileNotFoundError(f"{path}: {rep.get('error')}")
        return base64.b64decode(rep["b64"])

    def listdir(self, path: str) -> list[str]:
        rep = self._request(op="ls", path=path)
        if not rep["ok"]:
            raise FileNotFoundError(f"{path}: {rep.get('error')}")
        return rep["names"]

    def push_tree(self, host_dir: Path, vm_dir: str) -> None:
        """Copy a host folder into the VM (e.g. a device's flash kept on the host)."""
        for p in Path(host_dir).rglob("*"):
            if p.is_file():
                self.write_file(vm_dir.rstrip("/") + "/" + p.relative_to(host_dir).as_posix(), p.read_bytes())

    def pull_tree(self, vm_dir: str, host_dir: Path) -> None:
        """Copy a VM folder back to the host, recursively."""
        host_dir = Path(host_dir)
        host_dir.mkdir(parents=True, exist_ok=True)
        for name in self.listdir(vm_dir):
            sub = vm_dir.rstrip("/") + "/" + name
            try:
                data = self.read_file(sub)
            except FileNotFoundError:
                self.pull_tree(sub, host_dir / name)
                continue
            (host_dir / name).write_bytes(data)

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for f in (self._proc.stdout, self._proc.stderr):
            f.close()

    def __enter__(self) -> "MicroPythonVM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
