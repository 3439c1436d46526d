"""The one place commands are checked (firmware/commands.py) and where errors are reported
(firmware/errors.py ``PartError.source``), on the real MicroPython VM: the uplink refuses a bad
command before its number is used up and the app only applies what passed; an error from any part
is reported against that part, the display's too."""
from __future__ import annotations

import pytest

from host.commands.sim import vm_device
from tests.firmware.test_app_persistence import cmd


@pytest.mark.parametrize("name,args,reason", [
    ("reboot", {}, "unknown command 'reboot'"),
    ("identify", [], "unknown command 'identify'"),
    ("assign_patient", {}, "assign_patient needs a patient token or null"),
    ("assign_patient", {"patient": "no spaces"}, "assign_patient needs a patient token or null"),
    ("identify", {"seconds": 301}, "identify needs seconds 1..300"),
    ("identify", {"seconds": True}, "identify needs seconds 1..300"),
    ("settings", {"report_pi": 1}, "settings refused: report_pi must be true or false"),
    ("settings", {"temp_site_offset_c": 5.5}, "settings refused: temp_site_offset_c must be a number within -5..5"),
    ("settings", {"colour": "red"}, "settings refused: unknown setting 'colour'"),
])
def test_check_refuses_with_the_reason(vm, name, args, reason):
    vm.exec("from firmware import commands\n"
            "def refusal(c, a):\n"
            "    try:\n"
            "        commands.check(c, a)\n"
            "    except ValueError as e:\n"
            "        return str(e)\n")
    assert vm.eval(f"refusal({name!r}, {args!r})") == reason


@pytest.mark.parametrize("name,args", [
    ("assign_patient", {"patient": "p-7Hq2xK"}), ("assign_patient", {"patient": None}),
    ("identify", {"seconds": 1}), ("settings", {"report_pi": False, "temp_site_offset_c": -0.25}),
    ("settings", {}),
])
def test_check_passes_valid_commands_unchanged(vm, name, args):
    vm.exec("from firmware import commands")
    assert vm.eval(f"commands.check({name!r}, {args!r})") == args


def test_a_refused_command_does_not_use_up_its_number(vm):
    vm_device(vm, "normal", seed=1, duration_s=60)
    vm.exec("steps(3)")
    cmd(vm, 1, "settings", {"report_pi": "no"})
    assert vm.eval("[app.report_pi, dev.uplink.commands, dev.uplink.errors]") == [True, 0, 1]
    assert any("cmd ignored: settings refused: report_pi must be true or false" in x
               for x in vm.eval("dev.log.lines()"))
    cmd(vm, 1, "settings", {"report_pi": False})      # the same n, now valid: applied
    assert vm.eval("[app.report_pi, dev.uplink.commands]") == [False, 1]
    cmd(vm, 1, "settings", {"report_pi": True})       # and now used: a replay
    assert vm.eval("[app.report_pi, dev.uplink.commands]") == [False, 1]


def test_errors_of_every_part_name_their_source(vm):
    vm.exec("""
from firmware.drivers.max30102 import MAX30102Error
from firmware.drivers.mlx90614 import MLX90614Error
from firmware.drivers.ssd1306 import SSD1306Error
from firmware.errors import FlashError, PartError
from firmware.outbox import OutboxError
from firmware.seq import SeqError
from firmware.app import _source
made = [MAX30102Error('absent', 'm'), MLX90614Error('nack', 'm', 19), SSD1306Error('nack', 'm', 19),
        OutboxError('full'), SeqError('full'), OSError(5), ValueError('x')]
""")
    assert vm.eval("[_source(e) for e in made]") == ["max30102", "mlx90614", "display", "flash", "flash",
                                                     "app", "app"]
    assert vm.eval("[isinstance(e, PartError) for e in made[:3]]") == [True, True, True]
    assert vm.eval("[isinstance(e, FlashError) for e in made[3:5]]") == [True, True]
    assert vm.eval("[made[1].fault, made[1].errno, str(made[1])]") == ["nack", 19, "mlx90614:nack - m"]


def test_a_display_that_stops_answering_is_reported_and_the_app_goes_on(vm):
    vm_device(vm, "normal", seed=1, duration_s=60)
    vm.exec("steps(3)\nboard.oled.present = False\npress()\nsteps(3)")
    # the error names the display; the app drops the screen and measures without it
    assert vm.eval("[app.state, app.ui.d]") == ["error", None]
    assert vm.eval("app.last_error").startswith("display: ssd1306: no ACK"), vm.eval("app.last_error")
    assert any("ERROR display" in x for x in vm.eval("dev.log.lines()"))
    vm.exec("press()")
    assert vm.eval("app.state") == "idle"
    vm.exec("press()")
    assert vm.eval("until(lambda: app.state == 'result', 4000)"), vm.eval("[app.state, app.last_error]")
    assert vm.eval("app.result.seq") == 1
