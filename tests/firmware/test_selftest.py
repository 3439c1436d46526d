"""The sensor self-test (firmware/selftest.py) on real MicroPython against the simulated board:
every injected fault fails its check and is named; a unit with swapped LEDs passes, reported."""
import pytest

from sim.hardware.board import FAULTS

NAMES = ["mlx90614.bus", "mlx90614.ambient", "mlx90614.object", "max30102.part", "max30102.leds",
         "max30102.fifo_rate", "max30102.overflow", "max30102.die_temp"]

# the check each fault must fail (others may fail too when they depend on the same part)
FAILS = {
    "mlx90614:pec": "mlx90614.bus",
    "mlx90614:nack": "mlx90614.bus",
    "mlx90614:stuck": "mlx90614.bus",
    "mlx90614:error-flag": "mlx90614.object",
    "max30102:absent": "max30102.part",
    "max30102:overflow": "max30102.overflow",
}


def selftest(vm, faults=(), scenario="None"):
    vm.exec("from sim.hardware.board import SimBoard\nfrom firmware import selftest\n"
            f"board = SimBoard(scenario={scenario}, faults={list(faults)!r})\nres = selftest.run(board)")
    return {n: (ok, d) for n, ok, d in vm.eval("[list(r) for r in res]")}


def test_healthy_board_passes_every_check(vm):
    r = selftest(vm)
    assert list(r) == NAMES
    failed = {n: d for n, (ok, d) in r.items() if not ok}
    assert not failed
    assert "10 of 10 reads PEC-valid" in r["mlx90614.bus"][1]
    assert "Ta 24.0" in r["mlx90614.ambient"][1] and "Tobj 36.8" in r["mlx90614.object"][1]
    assert "configured 100" in r["max30102.fifo_rate"][1]
    assert r["max30102.overflow"][1].startswith("0 of ")
    assert "not swapped" in r["max30102.leds"][1] or "as specified" in r["max30102.leds"][1]
    assert vm.eval("selftest.passed(res)") is True
    # sensors sleep afterwards
    assert vm.eval("board.max.regs[0x09] & 0x80") == 0x80


@pytest.mark.parametrize("fault", sorted(FAILS))
def test_each_fault_fails_its_check_and_is_named(vm, fault):
    r = selftest(vm, [fault])
    ok, detail = r[FAILS[fault]]
    assert not ok, detail
    assert fault in detail, detail
    # every failing check names a fault of the part it tests
    part = fault.split(":")[0]
    for name, (ok, d) in r.items():
        if not ok:
            assert d.startswith(part + ":"), (name, d)
    # the other part's checks are untouched
    other = "max30102" if part == "mlx90614" else "mlx90614"
    assert all(ok for n, (ok, _) in r.items() if n.startswith(other)), r
    assert vm.eval("selftest.passed(res)") is False


def test_pec_detail_format(vm):
    ok, detail = selftest(vm, ["mlx90614:pec"])["mlx90614.bus"]
    assert detail.startswith("mlx90614:pec \u2014 PEC mismatch on 10 of 10 reads"), detail


def test_swapped_leds_pass_reported_and_corrected(vm):
    r = selftest(vm, ["max30102:swapped-leds"])
    assert all(ok for ok, _ in r.values()), r
    assert r["max30102.leds"][1] == "red/IR swapped on this unit: corrected in software"


def test_several_faults_at_once(vm):
    r = selftest(vm, ["mlx90614:nack", "max30102:overflow", "max30102:swapped-leds"])
    assert "mlx90614:nack" in r["mlx90614.bus"][1] and not r["mlx90614.bus"][0]
    assert "max30102:overflow" in r["max30102.overflow"][1] and not r["max30102.overflow"][0]
    assert r["max30102.leds"] == (True, "red/IR swapped on this unit: corrected in software")


def test_never_crashes_on_a_broken_bus(vm):
    """A bus that raises something no driver expects: every check fails with a detail, run()
    returns normally."""
    vm.exec("""
from sim.hardware.board import SimBoard
from firmware import selftest
board = SimBoard()
class Broken:
    def __getattr__(self, name):
        def f(*a, **k):
            raise RuntimeError('wires cut')
        return f
board.i2c = Broken()
res = selftest.run(board)
""")
    r = vm.eval("[list(x) for x in res]")
    assert [n for n, _, _ in r] == NAMES
    assert not any(ok for _, ok, _ in r)
    assert all(d for _, _, d in r)
    assert "wires cut" in r[0][2]


def test_same_results_under_cpython(vm):
    from firmware import selftest as st
    from sim.hardware.board import SimBoard

    for faults in ([], ["mlx90614:pec", "max30102:overflow"]):
        on_cpython = [list(x) for x in st.run(SimBoard(faults=faults, storage_root=""))]
        vm.exec(f"from sim.hardware.board import SimBoard\nfrom firmware import selftest\n"
                f"res = selftest.run(SimBoard(faults={faults!r}))")
        assert vm.eval("[list(r) for r in res]") == on_cpython


def test_every_fault_has_an_expectation():
    assert set(FAILS) | {"max30102:swapped-leds"} == set(FAULTS)


def test_optional_accelerometer_is_checked_only_when_fitted(vm):
    vm.exec("from sim.hardware.board import SimBoard\nfrom firmware import selftest\n"
            "board = SimBoard(accel=True)\nres = selftest.run(board)")
    r = {n: (ok, d) for n, ok, d in vm.eval("[list(r) for r in res]")}
    assert list(r) == NAMES + ["lis3dh.fifo"]
    ok, detail = r["lis3dh.fifo"]
    assert ok, detail
    assert "samples/s" in detail and "mean |a| 10" in detail        # ~1000 mg at rest
    assert vm.eval("board.lis.regs[0x20] >> 4") == 0                 # powered down after
    # a unit that reads no gravity (an axis dead or mis-scaled) fails, named
    vm.exec("def flat(t, out):\n    out[0] = 0; out[1] = 0; out[2] = 300\n"
            "board.lis.motion = flat\nres = selftest.run(board)")
    r = {n: (ok, d) for n, ok, d in vm.eval("[list(r) for r in res]")}
    ok, detail = r["lis3dh.fifo"]
    assert not ok and detail.startswith("lis3dh:gravity") and "mean |a| 30" in detail, detail
    # corrupt words: the driver's fault, named
    vm.exec("board.lis.motion = None\nboard.lis.inject('corrupt')\nres = selftest.run(board)")
    ok, detail = {n: (ok, d) for n, ok, d in vm.eval("[list(r) for r in res]")}["lis3dh.fifo"]
    assert not ok and detail.startswith("lis3dh:corrupt"), detail
