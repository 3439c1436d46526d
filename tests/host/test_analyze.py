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
