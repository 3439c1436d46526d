"""NeuroKit2 as a peer: ``ppg_clean`` (Elgendi band-pass) + ``ppg_findpeaks`` (Elgendi's two moving
averages), run once over a recording; beats then scored on the evaluation windows."""
from __future__ import annotations

import warnings

import numpy as np


def beats(ppg: np.ndarray, rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """(beat times in s, accepted flag per interval: all True, NeuroKit2 rejects none)."""
    import neurokit2 as nk  # noqa: PLC0415

    x = -np.asarray(ppg, dtype=float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clean = nk.ppg_clean(x, sampling_rate=int(round(rate_hz)))
            pk = np.asarray(nk.ppg_findpeaks(clean, sampling_rate=int(round(rate_hz)))["PPG_Peaks"], dtype=float)
    except Exception:
        return np.zeros(0), np.zeros(0, dtype=bool)
    if len(pk) < 2:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return pk / rate_hz, np.ones(len(pk) - 1, dtype=bool)
