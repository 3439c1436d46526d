"""A quick look at the signal chain: the firmware code under CPython (bit-identical to the
MicroPython VM: small ints only) over the synthetic suite, scored by the benchmark's own
functions (bench/signal.py), without the peers or the VM. About half a minute on 2 cores where
``python -m bench signal`` takes 10-16 minutes: for iterating, not for the published figures.

    .venv/bin/python -m bench.signal_quick                    # default suite (200 + 20)
    .venv/bin/python -m bench.signal_quick --n 300 --seed 7   # a held-out suite
    .venv/bin/python -m bench.signal_quick --real             # + the real sets (NABD_PPG_DATA)
    .venv/bin/python -m bench.signal_quick --why              # withheld clean windows by cause
    .venv/bin/python -m bench.signal_quick --gross            # every gross error, with context
    .venv/bin/python -m bench.signal_quick --baseline         # breathing/wander against the pulse

No ``run()``: ``python -m bench`` does not run it.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from bench import signal as bs
from bench import signal_data
from bench.signal_stats import fin
from sim import physiology as ph

NAN = float("nan")
KEYS = ("hr_mae_bpm", "spo2_arms_pct", "clean_windows", "clean_reported_hr_pct", "clean_reported_spo2_pct",
        "clean_reported_hr_pct_all_pi", "clean_reported_spo2_pct_all_pi", "coverage_pct_irregular",
        "coverage_pct_irregular_spo2", "irregular_hr_mae_bpm", "irregular_spo2_arms_pct",
        "coverage_pct_low_perfusion", "low_perfusion_hr_mae_bpm", "low_perfusion_spo2_arms_pct",
        "gross_errors_synthetic", "artifact_withheld_pct", "false_reading_no_finger", "time_to_first_valid_s_p50",
        "time_to_first_valid_s_p90", "time_to_first_valid_never_pct", "first_readings_hr_mae_bpm")


def chain(red, ir, motion=None) -> list[dict]:
    """The firmware chain over int sample arrays at 100 Hz (red −1 for IR only; ``motion`` the
    accelerometer magnitude in milli-g, or None), outputs as host.signalrun.run_chain gives them."""
    from firmware.signal.motion import MotionRef  # noqa: PLC0415
    from firmware.signal.pulseox import PulseOx  # noqa: PLC0415
    from host.signalrun import _to_dict  # noqa: PLC0415

    mr = MotionRef() if motion is not None else None
    po = PulseOx(motion=mr)
    out = []
    for i in range(len(ir)):
        if mr is not None:
            mr.push(int(motion[i]))
        if po.push(int(red[i]), int(ir[i])):
            out.append(_to_dict((po.t_ms, po.hr_x10, po.spo2_x10, po.pi_x100, po.q, po.withheld, po.age_ms,
                                 po.stale, po.irregular)))
    return out


def synthetic_job(p: ph.Physiology) -> dict:
    """bench.signal's per-recording rows (the peers' columns nan)."""
    rec = ph.render(p)
    red, ir = rec.counts()
    outs = chain(red, ir)
    clipped = rec.clipped()
    ots = [o["t"] for o in outs]
    rows = []
    for t in ots:
        o = bs.latest_in(outs, ots, t, bs.EVAL_STEP_S)
        expect = bs.expected_withheld(rec, clipped, t)
        rows.append({"t": t, "out": True, "withheld": o.get("withheld"), "hr": bs.reported(o, "hr"),
                     "spo2": bs.reported(o, "spo2"), "pi": bs.reported(o, "pi"), "q": o.get("q"),
                     "irregular": bool(o.get("irregular")), "ref_hr": rec.hr_at(t, bs.HR_WINDOW_S),
                     "ref_spo2": rec.spo2_at(t), "ref_pi": rec.pi_at(t), "finger_none": rec.finger_none(t - 1.0, t),
                     "expect": expect, "hp_hr": NAN, "nk_hr": NAN, "rd_hr": NAN, "rd_spo2": NAN, "rd_r": NAN})
    on = rec.finger_on_times()
    return {"name": p.name, "seed": p.seed, "hr": p.hr_bpm, "spo2": p.spo2_pct, "pi": p.pi_pct, "monk": p.monk,
            "on": on[0] if on else None, "off": p.finger_off_s, "motion": p.motion, "duration": rec.duration_s,
            "chain": True, "vm_s": 0.0, "n": rec.n, "rows": rows}


def real_job(rec: signal_data.RealRecord) -> dict:
    """bench.signal's per-recording summary of a real recording (no peers)."""
    from host.signalrun import prepare, prepare_motion  # noqa: PLC0415

    red, ir = prepare(rec.red, rec.ir, rec.rate_hz)
    mot = None if rec.motion is None else prepare_motion(rec.motion, len(rec.ir), rec.rate_hz)
    outs = chain(red, ir, mot)
    thinned = bs.per_second(outs)
    reasons: dict[str, int] = {}
    for o in thinned:
        if o.get("withheld") is not None:
            reasons[str(o["withheld"])] = reasons.get(str(o["withheld"]), 0) + 1
    return {"set": rec.set, "name": rec.name, "label": rec.label, "duration": len(rec.ir) / rec.rate_hz, "vm_s": 0.0,
            "outputs": len(thinned), "reported": sum(1 for o in thinned if o.get("withheld") is None),
            "reasons": reasons,
            "hr_rows": [{"t": t, "ref": v, "nabd": bs.value_at(outs, t, "hr"), "hp": NAN, "nk": NAN, "rd": NAN}
                        for t, v in rec.hr_ref],
            "sp_rows": [{"t": t, "ref": v, "nabd": bs.value_at(outs, t, "spo2"), "rd": NAN, "rd_r": NAN}
                        for t, v in rec.spo2_ref],
            "median": {k: bs._median([bs.reported(o, k) for o in thinned]) for k in ("hr", "spo2")},
            "rd_median": {"hr": NAN, "spo2": NAN, "r": NAN}, "peers_median": {"hp": NAN, "nk": NAN},
            "host_r": NAN, "spectral": {}} | ({} if mot is None else {"no_accel": bs.chain_summary(chain(red, ir), rec)})


def why(jobs: list[dict]) -> list[str]:
    """Withheld clean windows (artefact-free, >= 10 s after placement) by cause: true-PI band,
    time since placement, scenario and the chain's reason (HR; SpO2 only when HR was given)."""
    rows = [r | {"job": j} for j in jobs for r in j["rows"]]
    clean = [r for r in rows if r["expect"] is None and fin(r["ref_hr"]) and r["t"] - (r["job"]["on"] or 0) >= 10]

    def band(r):
        pi = r["ref_pi"]
        return ("< 0.2" if pi < 0.2 else "0.2-0.3" if pi < 0.3 else "0.3-0.5" if pi < 0.5 else "0.5-1" if pi < 1
                else ">= 1")

    def since(r):
        d = r["t"] - r["job"]["on"]
        return "10-15 s" if d < 15 else "15-20 s" if d < 20 else ">= 20 s"

    def reason(r):
        if not fin(r["hr"]):
            return str(r["withheld"])
        return "SpO2 only withheld" if not fin(r["spo2"]) else "reported"

    held = [r for r in clean if not (fin(r["hr"]) and fin(r["spo2"]))]
    out = [f"clean windows {len(clean)}, withheld (HR or SpO2) {len(held)}"]
    for name, key in (("true PI %", band), ("after placement", since), ("scenario", lambda r: r["job"]["name"]),
                      ("reason", reason)):
        c, tot = Counter(key(r) for r in held), Counter(key(r) for r in clean)
        out.append(f"  {name}: " + ", ".join(f"{k} {c[k]}/{tot[k]}" for k in sorted(tot, key=str)))
    c = Counter((band(r), reason(r)) for r in held if r["ref_pi"] >= bs.RESOLVABLE_PI_PCT)
    out.append("  at or above the floor, by band and reason: "
               + ", ".join(f"{b} {w} {v}" for (b, w), v in sorted(c.items(), key=lambda kv: -kv[1])))
    return out


def gross(ps: list[ph.Physiology], jobs: list[dict]) -> list[str]:
    """Every window with a gross error (|HR err| > 15 bpm or |SpO2 err| > 5 points): the recording,
    seconds after placement, reading against reference; for HR also the mean rate over the beats
    the chain could see (from 1.5 s after placement, within the reference's 8 s)."""
    out = []
    for i, (p, j) in enumerate(zip(ps, jobs, strict=True)):
        beats = None
        for r in j["rows"]:
            eh = fin(r["hr"]) and fin(r["ref_hr"]) and abs(r["hr"] - r["ref_hr"]) > bs.GROSS_HR_BPM
            es = fin(r["spo2"]) and fin(r["ref_spo2"]) and abs(r["spo2"] - r["ref_spo2"]) > bs.GROSS_SPO2_PCT
            if not (eh or es):
                continue
            line = (f"  #{i} {p.name} HR {p.hr_bpm:.0f} PI {p.pi_pct:.2f} % SpO2 {p.spo2_pct:.0f} Monk {p.monk} "
                    f"resp {p.resp_rate_bpm:.0f}/min wander {p.wander_frac * 100:.1f} %, "
                    f"{r['t'] - (j['on'] or 0):.1f} s after placement: ")
            if eh:
                if beats is None:
                    beats = ph.render(p).beats
                b = beats[(beats >= max(r["t"] - bs.HR_WINDOW_S, (j["on"] or 0) + 1.5)) & (beats <= r["t"])]
                seen = 60.0 * (len(b) - 1) / (b[-1] - b[0]) if len(b) > 2 else float("nan")
                line += f"HR {r['hr']:.1f} against {r['ref_hr']:.1f} (beats seen: {seen:.1f}) "
            if es:
                line += f"SpO2 {r['spo2']:.1f} against {r['ref_spo2']:.1f} (true PI {r['ref_pi']:.2f} %)"
            out.append(line)
    return out


def _bands(x, rate: float, seg_s: float = 25.0) -> list[tuple[float, float, float]]:
    """Per ``seg_s`` segment of a raw-DC channel: (pulse %, breathing-band rms / cardiac-band rms,
    wander-band rms / cardiac-band rms), of the signal over its mean; bands 0.7-5, 0.13-0.45 and
    0.02-0.12 Hz (zero-phase Butterworth), the pulse as 2·√2 × the cardiac rms."""
    import numpy as np  # noqa: PLC0415
    from scipy.signal import butter, sosfiltfilt  # noqa: PLC0415

    x = np.asarray(x, dtype=float)
    n = int(seg_s * rate)
    edge = int(2 * rate)
    out = []
    for a in range(0, len(x) - n + 1, n):
        s = x[a:a + n]
        if s.mean() <= 0:
            continue
        rel = s / s.mean()
        v = [sosfiltfilt(butter(2, band, "bandpass", fs=rate, output="sos"), rel)[edge:-edge].std()
             for band in ((0.7, min(5.0, rate / 2.2)), (0.13, 0.45), (0.02, 0.12))]
        if v[0] > 0:
            out.append((v[0] * 2 * np.sqrt(2) * 100, v[1] / v[0], v[2] / v[0]))
    return out


def baseline(ps: list[ph.Physiology]) -> list[str]:
    """The breathing and wander bands against the cardiac band: the real sets with a raw DC
    (alsementsov's finger recordings but those labelled bad/dead/moving/ambient light, EmotiBit)
    and the synthetic suite's artefact-free `sweep` recordings by true PI (whether the simulator's
    baselines, a fixed share of the DC, are as large against the pulse as real ones)."""
    import numpy as np  # noqa: PLC0415

    def line(name, rows):
        if not rows:
            return f"  {name}: none"
        a = np.array(rows)
        return (f"  {name}: {len(a)} segments, pulse {np.median(a[:, 0]):.2f} %; breathing/cardiac median "
                f"{np.median(a[:, 1]):.2f} (max {a[:, 1].max():.2f}), wander/cardiac median {np.median(a[:, 2]):.2f} "
                f"(max {a[:, 2].max():.2f})")

    real = []
    for name in ("alsementsov", "emotibit"):
        for rec in signal_data.LOADERS[name]():
            if not any(w in rec.name for w in ("bad", "dead", "move", "ambi")):
                real += _bands(rec.ir[int(5 * rec.rate_hz):], rec.rate_hz)
    syn = []
    for p in ps:
        if p.name == "sweep" and not p.motion and p.finger_off_s is None and p.finger_on_s is not None:
            _, ir = ph.render(p).counts()
            syn += _bands(ir[int((p.finger_on_s + 3) * p.rate_hz):], p.rate_hz)
    out = []
    # by the same measured pulse (2·√2 × cardiac rms, about half the peak-to-trough PI)
    for lo, hi in ((0.0, 0.15), (0.15, 0.3), (0.3, 0.6), (0.6, 1.2), (1.2, 100.0)):
        out.append(line(f"pulse {lo}-{hi} %, real (alsementsov, EmotiBit)", [v for v in real if lo <= v[0] < hi]))
        out.append(line(f"pulse {lo}-{hi} %, synthetic", [v for v in syn if lo <= v[0] < hi]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.signal_quick", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="synthetic recordings before the rhythm ones (200)")
    ap.add_argument("--seed", type=int, default=2025, help="suite seed (2025: the benchmark's)")
    ap.add_argument("--real", action="store_true", help="also the real sets (NABD_PPG_DATA)")
    ap.add_argument("--why", action="store_true", help="withheld clean windows by cause")
    ap.add_argument("--gross", action="store_true", help="every gross error, with context")
    ap.add_argument("--baseline", action="store_true",
                    help="breathing and wander bands against the pulse: real sets and the synthetic suite")
    ap.add_argument("--workers", type=int, default=bs.WORKERS)
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    with ProcessPoolExecutor(a.workers) as ex:
        ps = ph.suite(a.n, seed=a.seed)
        jobs = list(ex.map(synthetic_job, ps, chunksize=8))
        f, _ = bs.synthetic_figures(jobs)
        print(f"synthetic suite({a.n}, seed={a.seed}), {len(jobs)} recordings:")
        for k in KEYS:
            v = f.get(k)
            print(f"  {k:34s} {v:.3f}" if isinstance(v, float) else f"  {k:34s} {v}")
        if a.why:
            print("\n".join(why(jobs)))
        if a.gross:
            print("\n".join(["gross errors:"] + gross(ps, jobs)))
        if a.baseline:
            print("\n".join(["baseline bands against the cardiac band (25-s segments):"] + baseline(ps)))
        if a.real:
            recs = [r for loader in signal_data.LOADERS.values() for r in loader()]
            rf, rd = bs.real_figures(list(ex.map(real_job, recs, chunksize=2)))
            for k, v in rf.items():
                if k.endswith(("reported_pct", "gross_errors", "_hr_mae_bpm", "recordings_reported", "windows_pct")) \
                        and not any(p in k for p in ("heartpy", "neurokit2", "rd117")):
                    print(f"  {k:34s} {v:.3f}" if isinstance(v, float) else f"  {k:34s} {v}")
            for s, d in rd["sets"].items():
                print(f"  {s} withheld: {d['withheld_reasons']}" + (f"; without the accelerometer: {d['no_accel']['withheld_reasons']}" if "no_accel" in d else ""))
    print(f"({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
