"""Accuracy statistics used by the signal benchmark (plain functions, unit-tested)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def fin(x) -> bool:
    """True for a finite number (None and nan are 'no value')."""
    return x is not None and isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def arms(est: Sequence[float], ref: Sequence[float]) -> float:
    """ISO 80601-2-61 accuracy root-mean-square: sqrt(mean((SpO2 − SR)²))."""
    e = np.asarray(est, dtype=float) - np.asarray(ref, dtype=float)
    if e.size == 0:
        raise ValueError("Arms of no pairs")
    return float(np.sqrt(np.mean(e * e)))


def mae(est: Sequence[float], ref: Sequence[float]) -> float:
    e = np.asarray(est, dtype=float) - np.asarray(ref, dtype=float)
    if e.size == 0:
        raise ValueError("MAE of no pairs")
    return float(np.mean(np.abs(e)))


def bland_altman(est: Sequence[float], ref: Sequence[float]) -> tuple[float, float, float]:
    """(bias, lower, upper): mean difference est − ref and its 95 % limits of agreement
    bias ± 1.96 × SD of the differences (sample SD, n − 1)."""
    d = np.asarray(est, dtype=float) - np.asarray(ref, dtype=float)
    if d.size < 2:
        raise ValueError("Bland–Altman needs at least two pairs")
    bias = float(d.mean())
    sd = float(d.std(ddof=1))
    return bias, bias - 1.96 * sd, bias + 1.96 * sd


def pct(part: int, whole: int) -> float | None:
    return None if whole == 0 else 100.0 * part / whole


def pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])
