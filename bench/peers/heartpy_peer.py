"""HeartPy (van Gent et al.) as a peer: its own peak detection and RR-outlier rejection, run once
over a recording as it is meant to be used; beats then scored on the evaluation windows."""
from __future__ import annotations

import warnings

import numpy as np


def beats(ppg: np.ndarray, rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """(beat times in s, accepted flag per interval). HeartPy expects peaks upward: the ADC
    signal is inverted. Empty arrays when HeartPy refuses the signal."""
    import heartpy as hp  # noqa: PLC0415 (slow import, host only)

    x = -np.asarray(ppg, dtype=float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = hp.filter_signal(x, cutoff=[0.5, 5.0], sample_rate=rate_hz, order=3, filtertype="bandpass")
            wd, _ = hp.process(x, float(rate_hz), bpmmin=30, bpmmax=230)
    except Exception:  # HeartPy raises BadSignalWarning and assorted errors on poor signals
        return np.zeros(0), np.zeros(0, dtype=bool)
    peaks = np.asarray(wd["peaklist"], dtype=float)
    ok = np.asarray(wd["binary_peaklist"], dtype=bool)
    if len(peaks) < 2:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return peaks / rate_hz, ok[1:] & ok[:-1]
