"""Peer algorithms run side by side with nabd's firmware chain on the same recordings (host side).

Every peer takes a PPG in ADC polarity (light falls as blood volume rises, as the MAX30102 delivers
it) and returns beats or estimates; :func:`hr_in_window` turns beat times into the HR of one
evaluation window, the same windows nabd's outputs are scored on.
"""
from __future__ import annotations

import numpy as np


def hr_in_window(beat_times: np.ndarray, t: float, window_s: float = 8.0,
                 pairs: np.ndarray | None = None) -> float:
    """HR (bpm) from the beat intervals that end in [t − window_s, t]: 60 / mean interval.

    ``pairs`` (optional, bool per interval) marks intervals the peer itself accepted; rejected
    intervals are left out. nan when no accepted interval ends in the window."""
    b = np.asarray(beat_times, dtype=float)
    if len(b) < 2:
        return float("nan")
    ends = b[1:]
    iv = np.diff(b)
    m = (ends >= t - window_s) & (ends <= t)
    if pairs is not None:
        m &= pairs
    if not m.any():
        return float("nan")
    return 60.0 / float(iv[m].mean())
