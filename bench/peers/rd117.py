"""Maxim's reference-design method (RD117, MAXREFDES117) re-implemented from its published
description, for side-by-side comparison. Written from the description, not from Maxim's code.

Behaviour reproduced (including its documented weaknesses):

* input: 25 samples/s (the MAX30102 at 100 sps with 4-sample averaging), a 4-s buffer of 100
  samples of IR and red counts; the estimate is refreshed every second on the latest buffer;
* IR: remove the buffer mean, invert (valleys become peaks), 4-point moving average;
* threshold = the mean of that signal, clamped to 30..60 counts; peaks above it, plateaus taken at
  their left edge, peaks closer than 4 samples to a taller one dropped, at most 15 peaks;
* heart rate = 25 × 60 ÷ the integer mean distance between successive valleys (integer arithmetic,
  so the rate is quantised: 60, 62, 65, 68, 71, 75 ... bpm), valid with at least 2 valleys;
* SpO2: valley-to-valley beats (more than 3 samples apart), at most 5 of them; in each, the red
  maximum and its index; AC = the value at that index minus the straight line between the two
  valleys, for red and also for IR **at the red maximum's index** (the known bug); DC = the beat's
  maximum; ratio = (AC_red × DC_ir) ÷ (AC_ir × DC_red) in hundredths (integer, products shifted
  right by 7 first); the median of the ratios (mean of the two middle ones when there are 4 or
  more), valid when 3..183, mapped by a 184-entry table built from
  SpO2 = −45.060·R² + 30.354·R + 94.845.
"""
from __future__ import annotations

import numpy as np

FS = 25
BUFFER = 100
_MA = 4
_MIN_DIST = 4
_MAX_PEAKS = 15


def _table() -> list[int]:
    out = []
    for i in range(184):
        r = i / 100.0
        out.append(int(round(min(100.0, max(0.0, -45.060 * r * r + 30.354 * r + 94.845)))))
    return out


SPO2_TABLE = _table()


def _local_peaks(x: list[int], height: int) -> list[int]:
    """Local maxima above ``height``; a plateau counts once, at its left edge."""
    locs = []
    i = 1
    n = len(x)
    while i < n - 1:
        if x[i] > height and x[i] > x[i - 1]:
            w = 1
            while i + w < n and x[i] == x[i + w]:
                w += 1
            if i + w < n and x[i] > x[i + w]:
                locs.append(i)
                if len(locs) >= _MAX_PEAKS:
                    break
                i += w + 1
                continue
            i += w
            continue
        i += 1
    return locs


def _drop_close(locs: list[int], x: list[int]) -> list[int]:
    """Keep the tallest peaks, dropping any within _MIN_DIST samples of a taller kept one."""
    kept: list[int] = []
    for p in sorted(locs, key=lambda k: -x[k]):
        if all(abs(p - q) > _MIN_DIST for q in kept):
            kept.append(p)
    return sorted(kept)


def estimate(ir: list[int] | np.ndarray, red: list[int] | np.ndarray) -> tuple[int, bool, int, bool, int]:
    """One RD117 estimate on a 4-s buffer: (spo2, spo2_valid, hr, hr_valid, ratio in hundredths);
    -999 when invalid."""
    ir = [int(v) for v in ir]
    red = [int(v) for v in red]
    n = len(ir)
    mean = sum(ir) // n
    x = [mean - v for v in ir]                     # inverted: valleys of the PPG become peaks
    for k in range(n - _MA):
        x[k] = (x[k] + x[k + 1] + x[k + 2] + x[k + 3]) // _MA
    th = sum(x) // n
    th = 30 if th < 30 else (60 if th > 60 else th)
    valleys = _drop_close(_local_peaks(x[: n - _MA], th), x)

    hr, hr_ok = -999, False
    if len(valleys) >= 2:
        span = sum(valleys[k] - valleys[k - 1] for k in range(1, len(valleys))) // (len(valleys) - 1)
        if span > 0:
            hr, hr_ok = (FS * 60) // span, True

    ratios = []
    for a, b in zip(valleys[:-1], valleys[1:], strict=False):
        if b - a <= 3 or len(ratios) >= 5:
            continue
        seg_r = red[a:b]
        seg_i = ir[a:b]
        ri = a + int(np.argmax(seg_r))
        dc_r = max(seg_r)
        dc_i = max(seg_i)
        base_r = red[a] + (red[b] - red[a]) * (ri - a) // (b - a)
        base_i = ir[a] + (ir[b] - ir[a]) * (ri - a) // (b - a)   # IR evaluated at the RED maximum
        ac_r = red[ri] - base_r
        ac_i = ir[ri] - base_i
        num = (ac_r * dc_i) >> 7
        den = (ac_i * dc_r) >> 7
        if den > 0 and num != 0:
            ratios.append((num * 100) // den)
    spo2, spo2_ok, avg = -999, False, -999
    if ratios:
        ratios.sort()
        mid = len(ratios) // 2
        avg = (ratios[mid - 1] + ratios[mid]) // 2 if mid > 1 else ratios[mid]
        if 2 < avg < 184:
            spo2, spo2_ok = SPO2_TABLE[avg], True
    return spo2, spo2_ok, hr, hr_ok, avg


def to_25sps(x: np.ndarray, rate_hz: float) -> np.ndarray:
    """What RD117 is given: the signal at 25 samples/s (block average when the rate is 100 Hz,
    moving-average anti-aliasing and interpolation otherwise)."""
    x = np.asarray(x, dtype=float)
    if abs(rate_hz - 100.0) < 1e-6:
        m = len(x) // 4
        return x[: 4 * m].reshape(m, 4).mean(axis=1)
    if abs(rate_hz - 25.0) < 1e-6:
        return x
    k = max(1, int(round(rate_hz / FS)))
    sm = np.convolve(x, np.ones(k) / k, mode="same")
    t_in = np.arange(len(x)) / rate_hz
    t_out = np.arange(0.0, t_in[-1], 1.0 / FS)
    return np.interp(t_out, t_in, sm)


def run(red: np.ndarray | None, ir: np.ndarray, rate_hz: float,
        times: list[float]) -> list[tuple[float, float, float]]:
    """(hr, spo2, R) at each time in ``times`` from the 4-s buffer ending there (nan where RD117
    flags its estimate invalid, or the buffer is not yet full). Without red, SpO2 and R are nan.
    R is its median ratio (its table maps it to SpO2), for use with another calibration curve."""
    i25 = to_25sps(ir, rate_hz)
    r25 = to_25sps(red, rate_hz) if red is not None else i25
    out = []
    for t in times:
        end = int(round(t * FS))
        if end < BUFFER or end > len(i25):
            out.append((float("nan"), float("nan"), float("nan")))
            continue
        s, s_ok, h, h_ok, r = estimate(np.round(i25[end - BUFFER:end]), np.round(r25[end - BUFFER:end]))
        good = s_ok and red is not None
        out.append((float(h) if h_ok else float("nan"), float(s) if good else float("nan"),
                    r / 100.0 if good else float("nan")))
    return out
