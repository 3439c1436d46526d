"""The ESP32 board module on real MicroPython. The interpreter in the VM has no ``machine``,
``network``, ``ntptime``, ``socket`` or ``ssl``: small recording stand-ins are written to the VM's
/lib so that the board's own logic runs (pin map, I2C speed, button polarity, PWM buzzer, lazy
watchdog, 2000-epoch conversion only after NTP, TLS with CERT_REQUIRED and client credentials).
What the real ESP32 does with those calls is not tested here."""
from pathlib import Path

import pytest

from host.mpvm import MicroPythonError

# the stand-ins, real modules in tests/firmware/esp32_standins/, copied into the VM's /lib
STANDINS = Path(__file__).with_name("esp32_standins")


@pytest.fixture
def board_vm(vm):
    for f in sorted(STANDINS.glob("*.py")):
        vm.write_file("/lib/" + f.name, f.read_text())
    vm.exec("import machine, ntptime, socket, ssl\nfrom firmware.boards.esp32 import Esp32Board, epoch_offset\n"
            "b = Esp32Board()")
    return vm


def test_pins_bus_and_io(board_vm):
    vm = board_vm
    from firmware.boards import pins

    assert vm.eval("b.name") == "esp32"
    assert vm.eval("b.accel is None")       # the optional LIS3DH: nothing answers at 0x18/0x19
    assert vm.eval("[c for c in machine.calls if c[0] == 'I2C']") == [["I2C", 0, pins.SCL, pins.SDA, 100000]]
    assert [pins.SDA, pins.SCL, pins.MAX_INT, pins.BUTTON, pins.BUZZER] == [21, 22, 19, 27, 25]
    # button: pull-up, active low, reported as 1 while pressed
    assert vm.eval("['Pin', 27, 1, 2, None] in [list(c) for c in machine.calls]")
    assert vm.eval("b.button.value()") == 0
    vm.exec("machine.levels[27] = 0")
    assert vm.eval("b.button.value()") == 1
    # MAX30102 INT: raw level, 0 while pending
    vm.exec("machine.levels[19] = 0")
    assert vm.eval("b.max_int.value()") == 0
    # buzzer
    vm.exec("b.buzzer.on(2700)")
    assert vm.eval("[b.buzzer._pwm.f, b.buzzer._pwm.d, b.buzzer.is_on()]") == [2700, 32768, True]
    vm.exec("b.buzzer.off()")
    assert vm.eval("[b.buzzer._pwm.d, b.buzzer.is_on()]") == [0, False]
    with pytest.raises(MicroPythonError):
        vm.exec("b.buzzer.on(5)")
    assert vm.eval("[list(b.unique_id()), b.storage_root]") == [[0x24, 0x0A, 0xC4, 1, 2, 3], ""]


def test_watchdog_starts_at_first_feed(board_vm):
    vm = board_vm
    assert vm.eval("len(machine.WDT.made)") == 0
    vm.exec("b.wdt_feed(); b.wdt_feed()")
    assert vm.eval("[len(machine.WDT.made), machine.WDT.made[0].feeds, machine.WDT.made[0].timeout]") == [1, 2, 30000]


def test_unix_time_only_after_ntp_with_epoch_conversion(board_vm):
    vm = board_vm
    assert vm.eval("[epoch_offset(2000), epoch_offset(1970)]") == [946684800, 0]
    with pytest.raises(MicroPythonError):
        vm.exec("epoch_offset(1980)")
    assert vm.eval("b.clock.unix_time()") is None
    vm.exec("ntptime.reachable = False")
    assert vm.eval("[b.clock.sync_time(), b.clock.unix_time()]") == [False, None]
    vm.exec("ntptime.reachable = True")
    assert vm.eval("b.clock.sync_time()") is True
    # this VM's time counts from 1970: no offset; on the ESP32 (2000) the offset is added
    assert vm.eval("b.clock.unix_time() - int(__import__('time').time())") == 0
    vm.exec("b.clock._epoch_offset = epoch_offset(2000)")
    assert vm.eval("b.clock.unix_time() - int(__import__('time').time())") == 946684800


def test_network_tls_verifies_the_server(board_vm):
    vm = board_vm
    with pytest.raises(MicroPythonError) as e:
        vm.exec("b.network.open('gw.example', 8883)")
    assert e.value.type == "OSError"
    # the 15 s join timeout, on a virtual clock
    vm.exec("from sim.hardware.clock import VirtualClock; b.network._clock = vc = VirtualClock()")
    assert vm.eval("[b.network.connect_wifi('elsewhere', 'x'), b.network.isconnected()]") == [False, False]
    assert 15000 <= vm.eval("vc.ticks_ms()") <= 15200
    assert vm.eval("[b.network.connect_wifi('clinic', 'pw'), b.network.rssi()]") == [True, -61]
    vm.exec("s = b.network.open('gw.example', 8883, tls={'ca': b'CA', 'cert': b'C', 'key': b'K', "
            "'server_hostname': 'gw.nabd.ma'}, timeout_ms=2500)")
    assert vm.eval("[ssl.contexts[0].verify_mode, ssl.contexts[0].ca, list(ssl.contexts[0].chain), "
                   "ssl.contexts[0].hostname, socket.last[0].timeout, list(socket.last[0].addr)]") == [
        2, "CA", ["C", "K"], "gw.nabd.ma", 2.5, ["10.0.0.9", 8883]]
    # no CA: refused, and the socket is closed
    with pytest.raises(MicroPythonError) as e:
        vm.exec("b.network.open('gw.example', 8883, tls={'ca': None})")
    assert e.value.type == "ValueError"
    assert vm.eval("socket.last[-1].closed") is True
    # plain TCP
    vm.exec("p = b.network.open('gw.example', 1883); p.settimeout(1)")
    assert vm.eval("socket.last[-1].timeout") == 1
