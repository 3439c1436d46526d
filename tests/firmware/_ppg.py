"""A small synthetic PPG generator for the signal-chain tests (numpy, independent of
sim/physiology.py): known HR, SpO2 through the default calibration curve, PI, plus the
artefacts each withholding reason needs."""
from __future__ import annotations

import numpy as np

A, B, C = 1.5958422, -34.6596622, 112.6898759      # the firmware's default curve


def r_of_spo2(spo2: float) -> float:
    """Inverse of SpO2 = A·R² + B·R + C on its decreasing branch."""
    disc = B * B - 4 * A * (C - spo2)
    return (-B - np.sqrt(disc)) / (2 * A)


def pulse(phase: np.ndarray) -> np.ndarray:
    """Blood volume over one beat (0..1): fast systolic rise, dicrotic wave, slow decay."""
    sys_ = np.exp(-((phase - 0.18) / 0.08) ** 2)
    dia = 0.35 * np.exp(-((phase - 0.45) / 0.1) ** 2)
    return sys_ + dia


def ppg(seconds: float = 30.0, hr: float = 72.0, spo2: float = 97.0, pi: float = 2.0, rate: int = 100,
        dc_ir: float = 100_000.0, dc_red: float = 70_000.0, seed: int = 0, hrv: float = 0.01,
        irregular: bool = False, noise: float = 2.0, finger_on: float = 0.0):
    """(red, ir) int arrays and the beat times."""
    rng = np.random.default_rng(seed)
    rr = []
    tot = 0.0
    while tot < seconds + 3:
        base = 60.0 / hr
        v = base * (1 + rng.normal(0, 0.18 if irregular else hrv))
        v = min(max(v, base * 0.45), base * 2.0) if irregular else v
        rr.append(v)
        tot += v
    beats = np.cumsum([0.0] + rr)
    red, ir = render(beats, seconds, spo2, pi, rate, dc_ir, dc_red, rng, noise, finger_on)
    return red, ir, beats


def render(beats: np.ndarray, seconds: float, spo2: float = 97.0, pi: float = 2.0, rate: int = 100,
           dc_ir: float = 100_000.0, dc_red: float = 70_000.0, rng=None, noise: float = 2.0,
           finger_on: float = 0.0):
    """(red, ir) int arrays for the beat onsets ``beats`` (s, covering ``seconds``)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    k = np.clip(np.searchsorted(beats, t, side="right") - 1, 0, len(beats) - 2)
    ph = (t - beats[k]) / (beats[k + 1] - beats[k])
    p = pulse(ph)
    p = p - p.mean()
    p = p / (p.max() - p.min())
    r = r_of_spo2(spo2)
    ir = dc_ir * (1 - pi / 100 * p)
    red = dc_red * (1 - pi / 100 * r * p)
    if finger_on > 0:
        off = t < finger_on
        ir[off] = 150.0
        red[off] = 120.0
    ir = ir + rng.normal(0, noise, n)
    red = red + rng.normal(0, noise, n)
    return np.round(red).astype(int), np.round(ir).astype(int)
