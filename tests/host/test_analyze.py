"""``nabd analyze`` over CSV files: synthetic files of every layout, and the shared real recordings
(skipped with a message where ../shared/data is absent)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from host.cli import main
from tests.firmware._ppg import ppg

ALS = "max30102-alsementsov/CSV_rawdata"


def _run(capsys, *argv):
    rc = main(["analyze", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _json_lines(out):
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    assert "summary" in lines[-1]
    return lines[:-1], lines[-1]["summary"]


def test_named_columns_json(tmp_path, capsys):
    red, ir, _ = ppg(20, hr=84, spo2=95, seed=1)
    p = tmp_path / "rec.csv"
    p.write_text("time,red,ir\n" + "".join(f"{i},{a},{b}\n" for i, (a, b) in enumerate(zip(red, ir, strict=True))))
    rc, out, _ = _run(capsys, str(p), "--red", "red", "--ir", "ir", "--json")
    assert rc == 0
    reps, summary = _json_lines(out)
    assert len(reps) == 20
    assert set(reps[0]) >= {"t", "hr", "spo2", "pi", "q", "withheld"}
    assert abs(summary["hr_median"] - 84) < 2 and abs(summary["spo2_median"] - 95) < 2
    assert summary["reported"] + summary["withheld"] == 20


def test_headerless_auto_detect_ir_only_and_table(tmp_path, capsys):
    red, ir, _ = ppg(20, hr=66, rate=25, seed=2)
    p = tmp_path / "raw.csv"
    p.write_text("".join(f"{a},{b},0.00\n" for a, b in zip(red, ir, strict=True)))
    rc, out, _ = _run(capsys, str(p), "--rate", "25", "--ir", "1", "--json")
    assert rc == 0
    reps, summary = _json_lines(out)
    assert summary["spo2_median"] is None and abs(summary["hr_median"] - 66) < 2
    rc, out, _ = _run(capsys, str(p), "--rate", "25", "--red", "0", "--ir", "1")
    assert rc == 0 and "summary: HR median" in out and "SpO2" in out


def test_preamble_is_skipped_to_the_header(tmp_path, capsys):
    red, ir, _ = ppg(12, hr=75, rate=64, seed=3)
    pre = "reg0x0D,reg0x10,\n0x02,0x00,\nstart time,1596743748320\n"
    body = "timestamp,sampleNum,LEDC1,LEDC2,LEDC3\n" + "".join(
        f"{i * 15.6:.3f},{i},{b}.000000,{a}.000000,1200.0\n" for i, (a, b) in enumerate(zip(red, ir, strict=True)))
    p = tmp_path / "oxi.csv"
    p.write_text(pre + body)
    rc, out, _ = _run(capsys, str(p), "--rate", "64", "--red", "LEDC2", "--ir", "LEDC1", "--json")
    assert rc == 0
    assert abs(_json_lines(out)[1]["hr_median"] - 75) < 2
    rc2, out2, _ = _run(capsys, str(p), "--rate", "64", "--red", "2", "--ir", "3", "--skip-rows", "3", "--json")
    assert rc2 == 0 and _json_lines(out2)[1]["reported"] > 0


@pytest.mark.parametrize("argv,msg", [(["--red", "nope"], "no header row with column"),
                                      (["--ir", "7"], "does not exist")])
def test_missing_columns_exit_4(tmp_path, capsys, argv, msg):
    p = tmp_path / "a.csv"
    p.write_text("red,ir\n1,2\n3,4\n5,6\n")
    rc, _, err = _run(capsys, str(p), *argv)
    assert rc == 4 and msg in err


def test_unreadable_files_exit_4(tmp_path, capsys):
    rc, _, err = _run(capsys, str(tmp_path / "absent.csv"))
    assert rc == 4 and "no such file" in err
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00garbage\x80")
    rc, _, err = _run(capsys, str(p))
    assert rc == 4 and "cannot read" in err
    q = tmp_path / "text.csv"
    q.write_text("red,ir\nfoo,bar\n" * 30)
    rc, _, err = _run(capsys, str(q), "--json")
    assert rc == 4


def _local_bpm(ir: np.ndarray, rate: float, t: float, span: float = 10.0) -> float:
    """Pulse rate over the ``span`` s before ``t`` by an independent method: the peak of the
    zero-padded spectrum of the 0.5–4 Hz band."""
    from scipy import signal

    b, a = signal.butter(2, [0.5 / (rate / 2), 4.0 / (rate / 2)], "band")
    x = signal.filtfilt(b, a, ir)[max(0, int((t - span) * rate)):int(t * rate)]
    f = np.fft.rfftfreq(8192, 1 / rate)
    p = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x)), 8192))
    band = (f > 0.5) & (f < 3.5)
    return 60 * f[band][np.argmax(p[band])]


@pytest.mark.parametrize("name,hr", [("18-10-2019_08-55_HR109.csv", 109), ("18-10-2019_09-04_HR124.csv", 124)])
def test_real_recordings_with_hr_in_the_name(ppg_data, capsys, name, hr):
    rc, out, _ = _run(capsys, str(ppg_data / ALS / name), "--rate", "25", "--red", "0", "--ir", "1", "--json")
    assert rc == 0
    reps, summary = _json_lines(out)
    assert summary["reported"] >= 0.7 * len(reps)
    assert abs(summary["hr_median"] - hr) <= 0.05 * hr, summary       # the label is a spot reading
    assert 90 <= summary["spo2_median"] <= 100


def test_real_spo2_label(ppg_data, capsys):
    rc, out, _ = _run(capsys, str(ppg_data / ALS / "16-10-2019_11-55_spo97.csv"), "--rate", "25", "--red", "0",
                   "--ir", "1", "--json")
    assert rc == 0
    assert abs(_json_lines(out)[1]["spo2_median"] - 97) <= 2


@pytest.mark.parametrize("name", ["16-10-2019_14-32_bad.csv", "16-10-2019_14-50_bad.csv",
                                  "16-10-2019_17-01_yny_ladon_worst.csv", "16-10-2019_16-44_whitecoverlay.csv",
                                  "16-10-2019_16-43_ambicsv"])
def test_real_bad_recordings_give_no_reading(ppg_data, capsys, name):
    rc, out, _ = _run(capsys, str(ppg_data / ALS / name), "--rate", "25", "--red", "0", "--ir", "1", "--json")
    assert rc == 0
    reps, summary = _json_lines(out)
    assert summary["reported"] == 0 and summary["hr_median"] is None and reps


@pytest.mark.parametrize("name", ["16-10-2019_17-05_dead.csv", "17-10-2019_17-16_dead.csv", "18-10-2019_08-47_dead.csv"])
def test_real_dead_recordings(ppg_data, capsys, name):
    """The `dead` files carry a clear periodic pulse (PI ≈ 0.8 %, red/IR correlation 0.99 after
    band-pass): the chain may report, but only the pulse that is there. What is reported must match
    the recording's dominant pulse frequency, and a share of windows is withheld."""
    path = ppg_data / ALS / name
    d = np.loadtxt(path, delimiter=",")
    rc, out, _ = _run(capsys, str(path), "--rate", "25", "--red", "0", "--ir", "1", "--json")
    assert rc == 0
    reps, summary = _json_lines(out)
    assert summary["withheld"] >= 0.25 * len(reps)
    errs = [abs(o["hr"] - _local_bpm(d[:, 1], 25.0, o["t"])) for o in reps if o["hr"] is not None and o["t"] >= 10]
    if errs:
        assert np.median(errs) <= 5, errs


def test_real_oxiwear_with_preamble(ppg_data, capsys):
    files = sorted((ppg_data / "maxm86161-oxiwear/spo2-data/proto1").glob("*.csv"))
    assert files
    rc, out, _ = _run(capsys, str(files[0]), "--rate", "64", "--red", "LEDC2", "--ir", "LEDC1", "--json")
    assert rc == 0
    reps, _ = _json_lines(out)
    assert reps      # 2.6–6.7 s recordings: too short for a reading, but replayed without error


# -- checks of the input (issue 12) ---------------------------------------------------------------

def _csv(tmp_path, name, red, ir, head="red,ir", extra=None):
    p = tmp_path / name
    rows = [f"{a},{b}" if extra is None else f"{extra(k)},{a},{b}" for k, (a, b) in enumerate(zip(red, ir, strict=True))]
    p.write_text(head + "\n" + "\n".join(rows) + "\n")
    return p


@pytest.mark.parametrize("rate,shown", [("0", "0"), ("1e9", "1e+09"), ("-25", "-25"), ("nan", "nan")])
def test_rate_out_of_range_is_a_usage_error(tmp_path, capsys, rate, shown):
    red, ir, _ = ppg(10, seed=4)
    p = _csv(tmp_path, "r.csv", red, ir)
    rc, out, err = _run(capsys, str(p), "--rate", rate)
    assert rc == 2 and out == ""
    assert err.strip().endswith(f"--rate must be a sample rate of 10 to 10000 samples/s, got {shown}")


def test_a_rate_four_times_too_high_is_refused_with_the_likely_rate(tmp_path, capsys):
    # a 25 sps recording read at the default 100 sps: its 60 bpm pulse would be 240 bpm
    red, ir, _ = ppg(40, hr=60, rate=25, seed=5)
    p = tmp_path / "raw.csv"
    p.write_text("".join(f"{a},{b}\n" for a, b in zip(red, ir, strict=True)))
    rc, out, err = _run(capsys, str(p), "--red", "0", "--ir", "1")
    assert rc == 4 and out == ""
    assert err.strip().endswith(f"{p}: at the default rate 100 (no --rate) the pulse would be 240 bpm, outside "
                                "30–220: the recording is likely 25 samples/s (60 bpm); rerun with --rate 25")
    rc, _, err = _run(capsys, str(p), "--red", "0", "--ir", "1", "--rate", "100", "--force", "--json")
    assert rc == 0 and "(--force: analysed at 100)" in err
    rc, out, err = _run(capsys, str(p), "--red", "0", "--ir", "1", "--rate", "25", "--json")
    assert rc == 0 and err == "" and abs(_json_lines(out)[1]["hr_median"] - 60) < 2


def test_the_time_column_gives_the_rate_and_refuses_another(tmp_path, capsys):
    red, ir, _ = ppg(20, hr=70, rate=25, seed=6)
    p = _csv(tmp_path, "t.csv", red, ir, head="time_ms,red,ir", extra=lambda k: 1000 + 40 * k)
    rc, out, err = _run(capsys, str(p), "--red", "red", "--ir", "ir", "--rate", "100")
    assert rc == 4 and out == ""
    assert err.strip().endswith(f"{p}: --rate 100 disagrees with the time column 'time_ms' (25 samples/s): "
                                "rerun with --rate 25")
    rc, out, err = _run(capsys, str(p), "--red", "red", "--ir", "ir", "--json")
    assert rc == 0 and err == "rate: 25 samples/s from the time column 'time_ms'\n"
    summary = _json_lines(out)[1]
    assert summary["rate"] == 25 and abs(summary["hr_median"] - 70) < 2


def test_swapped_red_and_ir_are_warned_about(tmp_path, capsys):
    red, ir, _ = ppg(30, hr=72, spo2=97, seed=7)
    p = _csv(tmp_path, "s.csv", red, ir, head="a,b")
    rc, out, err = _run(capsys, str(p), "--red", "b", "--ir", "a", "--json")     # the wrong way round
    assert rc == 0
    assert err.startswith(f"warning: {p}: red and IR look swapped (ratio of ratios R = ")
    assert err.strip().endswith("the other way round): check --red and --ir")
    assert _json_lines(out)[1]["swapped_suspected"] is True
    rc, out, err = _run(capsys, str(p), "--red", "a", "--ir", "b", "--json")
    assert rc == 0 and err == "" and _json_lines(out)[1]["swapped_suspected"] is False


def test_skipped_rows_are_reported_with_their_lines_and_strict_refuses_them(tmp_path, capsys):
    red, ir, _ = ppg(20, hr=80, seed=8)
    lines = ["red,ir"] + [f"{a},{b}" for a, b in zip(red, ir, strict=True)]
    lines[56] = "oops,x"            # line 57 of the file
    lines[101] = "12,nan"           # line 102: not a finite number
    p = tmp_path / "b.csv"
    p.write_text("\n".join(lines) + "\n")
    rc, out, err = _run(capsys, str(p), "--json")
    assert rc == 0
    assert err == f"warning: {p}: skipped 2 rows not numeric in the chosen columns: lines 57, 102\n"
    assert _json_lines(out)[1]["skipped_lines"] == [57, 102]
    rc, out, err = _run(capsys, str(p), "--strict")
    assert rc == 4 and out == ""
    assert err.strip().endswith(f"{p}: line 57: not a number in the chosen columns (oops,x); --strict stops at "
                                "the first such row")


def test_progress_bar_on_a_terminal_for_long_recordings(tmp_path, capsys, monkeypatch):
    import sys

    red, ir, _ = ppg(200, hr=70, seed=9)
    p = _csv(tmp_path, "long.csv", red, ir)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    rc, out, err = _run(capsys, str(p), "--json")
    assert rc == 0 and len(_json_lines(out)[0]) == 200
    assert "\ranalyze [" in err and err.endswith("] 100 % of 3.3 min\n")
    short = _csv(tmp_path, "short.csv", *ppg(30, seed=9)[:2])
    rc, _, err = _run(capsys, str(short), "--json")
    assert rc == 0 and err == ""
