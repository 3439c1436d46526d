"""`nabd sim screenshot`: a simulated measurement on the MicroPython VM saved as a PNG."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from host import screenshot

REPO = Path(__file__).resolve().parents[2]


def shoot(tmp_path: Path, at: str, scenario: str = "normal") -> tuple[Path, dict]:
    out = tmp_path / f"{at}.png"
    p = subprocess.run([sys.executable, "-m", "host", "sim", "screenshot", "--scenario", scenario, "--out", str(out),
                        "--at", at, "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return out, json.loads(p.stdout)


def lit_pixels(path: Path) -> int:
    w, h, rows = screenshot.read_png(path)
    lit = bytes(screenshot.LIT)
    return sum(row.count(lit) for row in rows)


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = tmp_path_factory.mktemp("shots")
    return {at: shoot(d, at) for at in ("idle", "measuring", "result", "info")}


def test_png_written_with_the_panel_size_scaled(shots):
    for at, (path, info) in shots.items():
        w, h, rows = screenshot.read_png(path)
        margin = 4 * 4
        assert (w, h) == (128 * 4 + 2 * margin, 64 * 4 + 2 * margin), at
        assert info["screen"] == at and info["at"] == at
        assert lit_pixels(path) > 500, f"{at} screenshot is blank"


def test_screens_differ_and_result_carries_the_values(shots):
    idle, result = shots["idle"][0].read_bytes(), shots["result"][0].read_bytes()
    assert idle != result
    assert len({p.read_bytes() for p, _ in shots.values()}) == 4
    r = shots["result"][1]["result"]
    assert r["spo2"] is not None and r["hr"] is not None and r["state"] == "stored"


def test_unknown_scenario_is_a_usage_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "host", "sim", "screenshot", "--scenario", "nope", "--out",
                        str(tmp_path / "x.png")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown scenario" in p.stderr
    assert not (tmp_path / "x.png").exists()
