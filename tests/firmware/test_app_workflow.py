"""The measurement workflow (firmware/app.py, firmware/ui.py, firmware/main.py) on the real
MicroPython VM: the simulated board renders a physiology scenario, an in-memory MQTT peer plays
broker and gateway (signed acks), and the screen is read back from the SSD1306 model's pixels and
compared with the expected text rendered by framebuf into a scratch buffer."""
from __future__ import annotations

from pathlib import Path

import pytest

from host.commands.sim import vm_device
from sim import physiology

# expected-text comparison inside the VM (tests/firmware/_screen.py)
SCREEN = Path(__file__).with_name("_screen.py").read_text()


def device(vm, scenario="normal", seed=1):
    vm_device(vm, scenario, seed, duration_s=60)
    vm.exec(SCREEN + "panel = board.oled\n")
    vm.exec("steps(3)")
    return physiology.scenario(scenario, seed=seed, duration_s=60)


def measure(vm):
    vm.exec("press()")
    assert vm.eval("until(lambda: app.state == 'result', 4000)"), vm.eval("[app.state, app.last_error]")
    return vm.eval("app.result.to_dict()")


def test_short_press_temperature_then_finger_then_result_near_truth(vm):
    truth = device(vm, "normal", seed=1)
    assert vm.eval("app.state") == "idle"
    assert vm.eval("shows('Press', (128 - 80) // 2, 14, big=True)")
    vm.exec("press()")
    # temperature first: the aim screen, then the finger prompt
    assert vm.eval("app.state") == "temp" and vm.eval("app.ui.screen") == "aim"
    assert vm.eval("shows('Aim at', 16, U.ROW_PROMPT, big=True)")
    assert vm.eval("until(lambda: app.state == 'ppg')")
    t_temp = vm.eval("board.clock.ticks_ms()")
    assert vm.eval("until(lambda: app.ui.screen == 'measuring' or app.state == 'result')")
    assert vm.eval("until(lambda: app.state == 'result', 4000)"), vm.eval("[app.state, app.last_error]")
    r = vm.eval("app.result.to_dict()")
    assert abs(r["hr"] - truth.hr_bpm) <= 4, (r, truth.hr_bpm)
    assert abs(r["spo2"] - truth.spo2_pct) <= 3, (r, truth.spo2_pct)
    assert abs(r["temp_cc"] / 100 - truth.core_c) <= 0.3, (r, truth.core_c)
    assert r["seq"] == 1 and r["alerts"] == [] and r["reason"] is None
    assert t_temp < 2500, "temperature should take about a second"
    # the result screen: values, temperature line, delivery state, read from the panel's pixels
    assert vm.eval("until(lambda: app.result.state == 'stored' and app.ui.screen == 'result')")
    vm.exec("app.step()")
    assert vm.eval("[app.state, app.ui.screen, app.result.state]") == ["result", "result", "stored"]
    assert vm.eval(f"shows('{r['spo2']}%', 0, U.ROW_BIG, big=True)")
    assert vm.eval(f"shows('{r['hr']}', U.X_PULSE, U.ROW_BIG, big=True)")
    assert vm.eval("shows(U.temp_line(app.result), 0, U.ROW_TEMP)")
    assert vm.eval("shows('#1 stored', 0, U.ROW_STATE)")
    assert not vm.eval("shows('#1 queued', 0, U.ROW_STATE)")  # the comparison can fail
    # the gateway (loopback) verified and acknowledged the signed reading
    assert vm.eval("peer.acked") == [1] and vm.eval("dev.outbox.depth") == 0
    # back to idle: both sensors asleep, watchdog fed all along
    vm.exec("board.clock.sleep_ms(121000)\nsteps(2)")
    assert vm.eval("app.state") == "idle"
    assert vm.eval("board.mlx.asleep") is True
    assert vm.eval("bool(board.max.regs[0x09] & 0x80)") is True
    assert vm.eval("board.wdt_feeds") > 100


# (hypoxia: seed 2's desaturation is at 89.3-89.8 % when the result is taken, within the chain's
# accuracy of the 90 % threshold, so either side of it is a correct reading; seed 11's is at ~87 %)
@pytest.mark.parametrize("scenario,alert,word,seed", [("fever", "fever", "FEVER", 2),
                                                       ("tachycardia", "tachycardia", "PULSE>120", 2),
                                                       ("bradycardia", "bradycardia", "PULSE<50", 2),
                                                       ("hypoxia", "low_spo2", "SpO2<90", 11)])
def test_alerts_are_shown_and_beeped(vm, scenario, alert, word, seed):
    device(vm, scenario, seed=seed)
    r = measure(vm)
    assert alert in r["alerts"], r
    assert vm.eval(f"shows('{word}', 0, U.ROW_ALERT, inv=True)")
    assert vm.eval("board.buzzer.events") != []


def test_low_spo2_alert_words_fit_the_line(vm):
    vm.exec("from firmware import ui as U")
    assert vm.eval("U.alert_line(['low_spo2'])") == "SpO2<90"
    assert vm.eval("U.alert_line(['fever', 'low_spo2', 'tachycardia'])") == "FEVER SpO2<90"


def test_long_press_shows_device_info(vm):
    device(vm)
    vm.exec("press(1600)")
    assert vm.eval("app.state") == "info"
    dev_id = vm.eval("cfg.device_id")
    assert vm.eval(f"shows('{dev_id[:16]}', 0, 10)")
    assert vm.eval("shows('Net online', 0, 28)") or vm.eval("shows('Net offline', 0, 28)")
    assert vm.eval("shows('Waiting 0', 0, 37)")
    assert vm.eval("shows('Cal due none', 0, 46)")
    vm.exec("press()")
    assert vm.eval("app.state") == "idle"


def test_no_finger_for_30_s_shows_the_reason(vm):
    device(vm, "no-finger", seed=1)
    vm.exec("press()")
    assert vm.eval("until(lambda: app.state == 'ppg')")
    t0 = vm.eval("board.clock.ticks_ms()")
    assert vm.eval("app.ui.screen") == "finger"
    assert vm.eval("shows('Place', (128 - 80) // 2, U.ROW_PROMPT, big=True)")
    assert vm.eval("until(lambda: app.state == 'result', 4000)")
    waited = vm.eval("board.clock.ticks_ms()") - t0
    assert 30000 <= waited <= 31500
    r = vm.eval("app.result.to_dict()")
    assert r["spo2"] is None and r["hr"] is None and r["reason"] == "no finger"
    assert r["temp_cc"] is not None and r["seq"] == 1  # the temperature alone is recorded
    assert vm.eval("shows('--', 0, U.ROW_BIG, big=True)")
    assert vm.eval("shows('no finger', 0, U.ROW_ALERT)")


@pytest.mark.parametrize("fault,source", [("mlx90614:nack", "mlx90614"), ("max30102:absent", "max30102")])
def test_sensor_fault_is_shown_logged_reported_and_the_loop_goes_on(vm, fault, source):
    device(vm)
    vm.exec(f"board.inject('{fault}')\npress()")
    assert vm.eval("until(lambda: app.state == 'error', 500)")
    assert vm.eval("app.ui.screen") == "error"
    assert vm.eval("shows('Error', 1, 1, inv=True)")
    assert vm.eval("lit(0, 12, 128, 36)") > 50  # the reason is written
    assert vm.eval(f"dev.uplink.sensors['{source}']").startswith("error")
    assert vm.eval("dev.uplink.status_payload('online')['errors']") >= 1
    assert any(source in line and "ERROR" in line for line in vm.eval("dev.log.lines()"))
    # the loop keeps running; once the part answers again a measurement succeeds
    vm.exec("steps(20)")
    assert vm.eval("app.state") == "error"
    part = "mlx" if source == "mlx90614" else "max"
    vm.exec(f"board.{part}.clear()\npress()")
    assert vm.eval("app.state") == "idle"
    r = measure(vm)
    assert r["spo2"] is not None and r["temp_cc"] is not None
    assert vm.eval(f"dev.uplink.sensors['{source}']") == "ok"


def test_patient_assignment_is_shown_and_sent(vm):
    device(vm)
    vm.exec("peer.send_cmd(cfg.device_id, 1, 'assign_patient', {'patient': 'p-7Hq2xK'})\nsteps(3)")
    assert vm.eval("app.patient") == "p-7Hq2xK"
    assert vm.eval("shows('Pt p-7Hq2xK', 0, U.ROW_PATIENT)")
    r = measure(vm)
    assert r["patient"] == "p-7Hq2xK"
    assert vm.eval("shows('Pt p-7Hq2xK', 0, U.ROW_PATIENT)")
    payload = vm.eval("""[__import__('json').loads(jws.verify(cfg.key, m, 'nabd-reading+jws'))
                          for t, m in peer.published if t.endswith('/reading')][-1]"""
                      .replace("jws.", "__import__('firmware.jws').jws."))
    assert payload["patient"] == "p-7Hq2xK" and payload["seq"] == 1
    # a forged command (wrong key) changes nothing
    vm.exec("peer.key = b'x' * 32\npeer.send_cmd(cfg.device_id, 2, 'assign_patient', {'patient': None})\nsteps(3)")
    assert vm.eval("app.patient") == "p-7Hq2xK"


def test_per_sample_path_allocates_nothing(vm):
    device(vm)
    vm.exec("press()")
    assert vm.eval("until(lambda: app.state == 'ppg')")
    vm.exec("board.clock.sleep_ms(2000)\napp._feed()")
    # the FIFO drained into the chain with the heap locked, 20 times 150 ms of samples
    vm.exec("from tests.firmware._heap import locked\nruns = []\nfeed = app._feed\n"
            "for _ in range(20):\n    board.clock.sleep_ms(150)\n    runs.append(locked(feed))\n")
    runs = vm.eval("runs")
    assert [r[1:] for r in runs] == [["ok", 0]] * 20
    assert sum(r[0] for r in runs) >= 280


def test_main_run_returns_after_max_readings(vm):
    device(vm)
    out = vm.exec("""
def presser(a):
    if board.button.value():
        board.button.release()          # a short press: released at the next step
    elif a.state in ('idle', 'result') and a._elapsed() > 1000:
        board.button.press()
    return False
main.run(board, dev=dev, max_readings=2, until=presser)
print(app.readings, app.state, dev.outbox.max_seq)
""")
    readings, state, max_seq = out.split()
    assert readings == "2" and state == "result" and max_seq == "2"


def test_irregular_rhythm_reading_carries_the_flag(vm):
    # atrial fibrillation: the pulse rate is reported (the mean over 8 s) and the signed reading
    # says how it was formed; a steady rhythm's reading does not
    import base64
    import json

    device(vm, "af", seed=3)
    r = measure(vm)
    assert r["hr"] is not None and r["reason"] is None, r
    assert vm.eval("app.result.irregular") is True
    token = vm.eval("[p for t, p in peer.published if t.endswith('/reading')][-1]")
    body = token.split(b".")[1] if isinstance(token, bytes) else token.split(".")[1]
    body = body.decode() if isinstance(body, bytes) else body
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert "irregular" in payload["flags"] and "irregular" not in r["alerts"]
