"""Commands that survive a restart (firmware/app.py ``command``, ``_restore``, ``_store``;
firmware/config.py ``save``) on the real MicroPython VM: the gateway's signed ``assign_patient``
and ``settings`` reach the app through the in-memory peer, then the device "reboots" (a new
SimBoard and everything ``main.build`` makes, on the same flash folder) and must still have them.
An invalid stored value is ignored with a log line; a failed write (flash full) keeps the command
in effect in RAM, logs and counts it, and leaves config.json as it was."""
from __future__ import annotations

from pathlib import Path

from host.commands.sim import vm_device

# a restart: RAM gone, the flash folder kept (SteppedDevice.reboot); the session names follow it
REBOOT = """
sd.reboot()
board, cfg, peer, dev, app = sd.board, sd.cfg, sd.peer, sd.dev, sd.app
steps(3)
"""

# config.save calls counted, a full flash on demand (tests/firmware/_flashspy.py)
SPY = Path(__file__).with_name("_flashspy.py").read_text()


def device(vm):
    vm_device(vm, "normal", seed=1, duration_s=60)
    vm.exec(SPY)
    vm.exec("steps(3)")


def cmd(vm, n, name, args):
    vm.exec(f"peer.send_cmd(cfg.device_id, {n}, {name!r}, {args!r})\nsteps(3)")


def test_patient_and_settings_survive_a_restart(vm):
    device(vm)
    assert vm.eval("[app.patient, app.report_pi, app.temp_site_offset_cc]") == [None, True, None]
    cmd(vm, 1, "assign_patient", {"patient": "p-7Hq2xK"})
    cmd(vm, 2, "settings", {"report_pi": False, "temp_site_offset_c": 0.3})
    assert vm.eval("[app.patient, app.report_pi, app.temp_site_offset_cc]") == ["p-7Hq2xK", False, 30]
    assert vm.eval("stored()") == {"patient": "p-7Hq2xK", "report_pi": False, "temp_site_offset_c": 0.3}
    assert vm.eval("app.errors") == 0

    vm.exec(REBOOT)
    assert vm.eval("[app.patient, app.report_pi, app.temp_site_offset_cc]") == ["p-7Hq2xK", False, 30]
    assert vm.eval("app.errors") == 0 and vm.eval("app.ui.screen") == "idle"
    # in effect, not only in attributes: the next reading carries the patient, no PI, and the
    # temperature is the object temperature plus the stored site offset
    vm.exec("press()")
    assert vm.eval("until(lambda: app.state == 'result', 4000)"), vm.eval("[app.state, app.last_error]")
    r = vm.eval("app.result.to_dict()")
    assert r["patient"] == "p-7Hq2xK" and r["pi_cp"] is None and r["spo2"] is not None
    assert r["temp_cc"] == vm.eval("app.thermo.object_cc") + 30

    # clearing the patient also survives a restart (the key leaves config.json)
    cmd(vm, 3, "assign_patient", {"patient": None})
    assert vm.eval("stored()") == {"report_pi": False, "temp_site_offset_c": 0.3}
    vm.exec(REBOOT)
    assert vm.eval("[app.patient, app.report_pi, app.temp_site_offset_cc]") == [None, False, 30]


def test_flash_is_written_only_when_a_value_changes(vm):
    device(vm)
    cmd(vm, 1, "assign_patient", {"patient": "p-7Hq2xK"})
    cmd(vm, 2, "assign_patient", {"patient": "p-7Hq2xK"})            # the gateway resends it
    cmd(vm, 3, "settings", {"report_pi": False})
    cmd(vm, 4, "settings", {"report_pi": False})
    cmd(vm, 5, "assign_patient", {"patient": None})
    cmd(vm, 6, "assign_patient", {"patient": None})
    assert vm.eval("saves") == [["patient"], ["patient", "report_pi"], ["report_pi"]]
    # a refused command (one invalid key) changes nothing, in RAM or on flash
    cmd(vm, 7, "settings", {"temp_site_offset_c": 0.5, "report_pi": "no"})
    assert vm.eval("[app.report_pi, app.temp_site_offset_cc, len(saves)]") == [False, None, 3]
    assert any("settings refused" in line for line in vm.eval("dev.log.lines()"))


def test_an_invalid_stored_setting_is_logged_and_ignored_at_boot(vm):
    device(vm)
    vm.exec("""
d = dict(cfg.data)
d['settings'] = {'report_pi': False, 'temp_site_offset_c': 99, 'patient': 'bad token!'}
config.save(board, d)
""")
    vm.exec(REBOOT)
    # the valid one applied, the invalid ones left at their defaults; the device is up and idle
    assert vm.eval("[app.patient, app.report_pi, app.temp_site_offset_cc]") == [None, False, None]
    assert vm.eval("app.state") == "idle" and vm.eval("app.errors") == 2
    assert vm.eval("dev.uplink.status_payload('online')['errors']") == 2
    lines = vm.eval("dev.log.lines()")
    assert any("ERROR config: stored setting temp_site_offset_c=99 ignored" in x for x in lines), lines
    assert any("ERROR config: stored patient ignored" in x for x in lines), lines
    assert not any("bad token" in x for x in lines)
    # a new valid command repairs the stored value
    cmd(vm, 1, "settings", {"temp_site_offset_c": -0.25})
    assert vm.eval("stored()")["temp_site_offset_c"] == -0.25
    vm.exec(REBOOT)
    assert vm.eval("[app.temp_site_offset_cc, app.errors]") == [-25, 1]   # the patient still bad


def test_a_failed_write_keeps_the_command_in_effect_and_is_logged(vm):
    device(vm)
    cmd(vm, 1, "settings", {"report_pi": False})
    vm.exec("flash_full(True)")
    cmd(vm, 2, "settings", {"temp_site_offset_c": 1.5, "report_pi": True})
    cmd(vm, 3, "assign_patient", {"patient": "p-7Hq2xK"})
    # in effect in RAM, on the screen, and the loop goes on
    assert vm.eval("[app.patient, app.report_pi, app.temp_site_offset_cc]") == ["p-7Hq2xK", True, 150]
    assert vm.eval("app.state") == "idle" and vm.eval("app.ui.screen") == "idle"
    assert vm.eval("app.errors") == 2 and vm.eval("dev.uplink.status_payload('online')['errors']") == 2
    lines = vm.eval("dev.log.lines()")
    assert any("ERROR flash: report_pi,temp_site_offset_c not saved, in effect until restart" in x
               and "ENOSPC" in x for x in lines), lines
    assert any("ERROR flash: patient not saved" in x for x in lines), lines
    # config.json untouched and whole, the part-written temp file removed
    assert vm.eval("stored()") == {"report_pi": False}
    assert vm.eval("'config.json.tmp' in __import__('os').listdir('/flash')") is False
    # space again: the same command is written now (the stored value still differs)
    vm.exec("flash_full(False)")
    cmd(vm, 4, "assign_patient", {"patient": "p-7Hq2xK"})
    assert vm.eval("stored()") == {"report_pi": False, "patient": "p-7Hq2xK"}
    # after a restart: what reached flash, not what failed to
    vm.exec(REBOOT)
    assert vm.eval("[app.patient, app.report_pi, app.temp_site_offset_cc]") == ["p-7Hq2xK", False, None]
