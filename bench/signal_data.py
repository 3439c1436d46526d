"""Loaders for the real PPG recordings in ``../shared/data/ppg/`` (read in place, never copied).

Each loader yields :class:`RealRecord`: red and IR in ADC polarity (light falls as blood volume
rises; red may be None), the rate, and the reference the set carries. Sets recorded AC-coupled or
normalised (TROIKA, the ICU PLETH) are mapped to ADC polarity around a DC of 100,000 counts with
a 2 % pulsatile amplitude, the level a MAX30102 finger reading has. A missing set yields nothing
(the caller reports it as skipped).
"""
from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# beside the project root; NABD_PPG_DATA points elsewhere (a git worktree one level deeper)
PPG = Path(os.environ.get("NABD_PPG_DATA") or REPO.parent / "shared" / "data" / "ppg")


@dataclass
class RealRecord:
    set: str
    name: str
    rate_hz: float
    ir: np.ndarray
    red: np.ndarray | None = None
    hr_ref: list[tuple[float, float]] = field(default_factory=list)     # (t end of window, bpm)
    spo2_ref: list[tuple[float, float]] = field(default_factory=list)   # (t, %)
    label: str = ""                                                      # quality label (alsementsov)
    hr_window_s: float = 8.0
    motion: np.ndarray | None = None     # accelerometer magnitude |a|, milli-g, at rate_hz (TROIKA)


def to_adc_polarity(x: np.ndarray, dc: float = 100_000.0, ac_frac: float = 0.02) -> np.ndarray:
    """Blood-volume-polarity, AC-coupled/normalised PPG -> positive ADC-like counts."""
    x = np.asarray(x, dtype=float)
    x = np.where(np.isfinite(x), x, np.nanmedian(x))
    lo, hi = np.percentile(x, [5, 95])
    k = dc * ac_frac / max(hi - lo, 1e-12)
    return np.round(dc - k * (x - np.median(x)))


def troika() -> list[RealRecord]:
    d = PPG / "troika-ieee-spc2015" / "datasets" / "troika" / "training_data"
    if not d.is_dir():
        return []
    import scipy.io as sio  # noqa: PLC0415

    out = []
    for f in sorted(d.glob("DATA_*.mat")):
        ref = d / f.name.replace("DATA_", "REF_")
        if not ref.exists():
            continue
        sig = sio.loadmat(f)["sig"]
        bpm = sio.loadmat(ref)["BPM0"].ravel()
        # rows 3-5: the wrist accelerometer's x, y, z in g, sampled with the PPG
        mag = 1000.0 * np.sqrt((np.asarray(sig[3:6], dtype=float) ** 2).sum(axis=0))
        out.append(RealRecord("troika", f.stem, 125.0, to_adc_polarity(sig[1]),
                              hr_ref=[(8.0 + 2.0 * i, float(b)) for i, b in enumerate(bpm)], motion=mag))
    return out


def ecg_reference(ecg: np.ndarray, rate: float, step_s: float = 2.0, window_s: float = 8.0) -> list[tuple[float, float]]:
    """Reference HR from ECG lead II: R peaks by NeuroKit2, 60 / mean RR over each 8-s window
    (2-s step); windows with implausible or irregular intervals (ectopy, noise) are dropped."""
    import neurokit2 as nk  # noqa: PLC0415

    ecg = np.where(np.isfinite(ecg), ecg, 0.0)
    clean = nk.ecg_clean(ecg, sampling_rate=int(rate))
    _, info = nk.ecg_peaks(clean, sampling_rate=int(rate))
    r = np.asarray(info["ECG_R_Peaks"], dtype=float) / rate
    out = []
    t = window_s
    while t <= len(ecg) / rate:
        b = r[(r >= t - window_s) & (r <= t)]
        if len(b) >= 3:
            iv = np.diff(b)
            if iv.min() > 0.27 and iv.max() < 2.0 and iv.max() / iv.min() < 1.5:
                out.append((t, 60.0 / float(iv.mean())))
        t += step_s
    return out


def wfdb_icu() -> list[RealRecord]:
    d = PPG / "wfdb-icu"
    if not d.is_dir():
        return []
    import wfdb  # noqa: PLC0415

    out = []
    for hea in sorted(d.glob("*.hea")):
        rec = wfdb.rdrecord(str(hea.with_suffix("")))
        names = list(rec.sig_name)
        if "PLETH" not in names or "II" not in names:
            continue
        sig = rec.p_signal
        out.append(RealRecord("wfdb", hea.stem, float(rec.fs), to_adc_polarity(sig[:, names.index("PLETH")]),
                              hr_ref=ecg_reference(sig[:, names.index("II")], float(rec.fs))))
    return out


def alsementsov() -> list[RealRecord]:
    d = PPG / "max30102-alsementsov" / "CSV_rawdata"
    if not d.is_dir():
        return []
    out = []
    for f in sorted(d.iterdir()):
        rows = []
        for line in f.read_text(errors="replace").splitlines():
            parts = line.split(",")
            try:
                rows.append((float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                continue
        if len(rows) < 50:
            continue
        a = np.asarray(rows)
        rec = RealRecord("alsementsov", f.name, 25.0, a[:, 1], red=a[:, 0])
        dur = len(a) / 25.0
        m = re.search(r"HR(\d+)", f.name)
        if m:
            rec.hr_ref = [(dur, float(m.group(1)))]
        m = re.search(r"spo(\d+)", f.name, re.I)
        if m:
            rec.spo2_ref = [(dur, float(m.group(1)))]
        for lab in ("superb", "good", "lowbad", "bad", "dead", "shortmove", "stopbreath", "ambi"):
            if lab in f.name:
                rec.label = lab
                break
        out.append(rec)
    return out


def oxiwear() -> list[RealRecord]:
    d = PPG / "maxm86161-oxiwear" / "spo2-data" / "proto1"
    if not d.is_dir():
        return []
    out = []
    for f in sorted(d.glob("*.csv")):
        m = re.match(r"(\d+)-(\d+)-(\d+)", f.name)
        if not m:
            continue
        lines = f.read_text(errors="replace").splitlines()
        try:
            h = next(i for i, ln in enumerate(lines) if ln.startswith("timestamp,sampleNum"))
        except StopIteration:
            continue
        rd = csv.DictReader(io.StringIO("\n".join(lines[h:])))
        ts, ir, red = [], [], []
        for row in rd:
            try:
                ts.append(float(row["timestamp"]) / 1000.0)
                ir.append(float(row["LEDC1"]))
                red.append(float(row["LEDC2"]))
            except (ValueError, KeyError, TypeError):
                continue
        if len(ts) < 64:
            continue
        ts_a = np.asarray(ts)
        rate = 1.0 / float(np.median(np.diff(ts_a)))
        t_u = np.arange(ts_a[0], ts_a[-1], 1.0 / rate)
        ir_u = np.interp(t_u, ts_a, ir)
        red_u = np.interp(t_u, ts_a, red)
        dur = len(t_u) / rate
        out.append(RealRecord("oxiwear", f.name, rate, ir_u, red=red_u,
                              hr_ref=[(dur, float(m.group(3)))], spo2_ref=[(dur, float(m.group(2)))]))
    return out


def emotibit() -> list[RealRecord]:
    d = PPG / "max30101-emotibit"
    if not d.is_dir():
        return []
    out = []
    for z in sorted(d.glob("*.zip")):
        with zipfile.ZipFile(z) as zf:
            name = next((n for n in zf.namelist() if n.endswith("EmotiBit.csv")), None)
            if name is None:
                continue
            text = zf.read(name).decode(errors="replace")
        pi: list[tuple[float, float]] = []
        pr: list[float] = []
        un: list[tuple[float, float]] = []
        for row in csv.reader(io.StringIO(text)):
            if len(row) < 7:
                continue
            tag = row[3]
            try:
                t_ms = float(row[0])
                if tag == "PI":
                    pi.extend((t_ms, float(v)) for v in row[6:])
                elif tag == "PR":
                    pr.extend(float(v) for v in row[6:])
                elif tag == "UN":
                    un.append((t_ms, float(row[-1])))
            except ValueError:
                continue
        n = min(len(pi), len(pr))
        if n < 250:
            continue
        t0 = pi[0][0]
        dur = (pi[n - 1][0] - t0) / 1000.0
        rate = n / dur if dur > 0 else 25.0
        ir = np.asarray([v for _, v in pi[:n]])
        red = np.asarray(pr[:n])
        out.append(RealRecord("emotibit", z.stem, rate, ir, red=red,
                              spo2_ref=[((t - t0) / 1000.0, s) for t, s in un if 70 <= s <= 100]))
    return out


LOADERS = {"troika": troika, "wfdb": wfdb_icu, "alsementsov": alsementsov, "oxiwear": oxiwear,
           "emotibit": emotibit}
