"""The simulated board (sim/hardware/board.py): the board contract on virtual parts, on real
MicroPython and on CPython, fault injection by name, and the network layer (real sockets and TLS
under CPython, none in the VM)."""
import os
import socket
import ssl
import threading

import pytest

from host.mpvm import MicroPythonError
from sim.hardware.board import FAULTS, SimBoard, SimReset

NEW = "from sim.hardware.board import SimBoard, SimReset, FAULTS\n"


def test_contract_attributes_in_the_vm(vm):
    vm.exec(NEW + "b = SimBoard(storage_root='/flash/unit1')")
    assert vm.eval("b.name") == "sim"
    assert vm.eval("b.i2c.scan()") == [0x3C, 0x57, 0x5A]
    assert vm.eval("b.i2c.freq") == 100000
    for attr in ("ticks_ms", "ticks_us", "ticks_diff", "ticks_add", "sleep_ms", "sleep_us", "unix_time", "sync_time"):
        assert vm.eval(f"callable(b.clock.{attr})"), attr
    for attr in ("wdt_feed", "unique_id", "urandom", "free_heap", "reset"):
        assert vm.eval(f"callable(b.{attr})"), attr
    assert vm.eval("[b.sda, b.scl, b.button.id, b.max_int.id, b.buzzer.id]") == [21, 22, 27, 19, 25]
    assert vm.eval("b.clock.unix_time()") is None


def test_storage_root_created_in_vm_and_on_host(vm, tmp_path):
    vm.exec(NEW + "b = SimBoard(storage_root='/flash/a/b')\n"
            "f = open(b.storage_root + '/x.txt', 'w'); f.write('ok'); f.close()")
    assert vm.read_file("/flash/a/b/x.txt") == b"ok"
    vm.exec("b2 = SimBoard(storage_root='/flash/a/b')")  # existing folder: fine
    root = tmp_path / "dev" / "flash"
    b = SimBoard(storage_root=str(root))
    assert root.is_dir() and b.storage_root == str(root)


def test_button_buzzer_watchdog_reset(vm):
    vm.exec(NEW + "b = SimBoard()")
    assert vm.eval("b.button.value()") == 0
    vm.exec("b.button.press()")
    assert vm.eval("[b.button.value(), b.button.presses]") == [1, 1]
    vm.exec("b.button.release()")
    assert vm.eval("b.button.value()") == 0
    vm.exec("b.clock.sleep_ms(5)\nb.buzzer.on(2700)\nb.clock.sleep_ms(120)\nb.buzzer.off()\nb.buzzer.off()")
    assert vm.eval("b.buzzer.events") == [[5, 2700], [125, 0]]
    assert vm.eval("b.buzzer.is_on()") is False
    with pytest.raises(MicroPythonError) as e:
        vm.exec("b.buzzer.on(5)")
    assert e.value.type == "ValueError"
    vm.exec("b.wdt_feed()\nb.wdt_feed()")
    assert vm.eval("b.wdt_feeds") == 2
    with pytest.raises(MicroPythonError) as e:
        vm.exec("b.reset()")
    assert e.value.type == "SimReset"


def test_identity_randomness_heap(vm):
    vm.exec(NEW + "b = SimBoard(seed=0x1234)\nc = SimBoard(seed=7)")
    assert vm.eval("b.unique_id().hex()") == "240ac4001234"
    assert vm.eval("c.unique_id().hex()") == "240ac4000007"
    r = vm.eval("[len(b.urandom(16)), b.urandom(8) != b.urandom(8)]")
    assert r == [16, True]
    free, gc_free = vm.eval("[b.free_heap(), __import__('gc').mem_free()]")
    assert 0 < free and abs(free - gc_free) < 4096
    b = SimBoard(storage_root="")
    assert len(b.urandom(32)) == 32 and b.free_heap() > 10**6
    with pytest.raises(SimReset):
        b.reset()


def test_max_int_pin_follows_the_sensor(vm):
    """INT is high while nothing is pending, goes low when the FIFO reaches its almost-full
    threshold with the interrupt enabled (the driver's default configuration), and high again
    once the status is read."""
    vm.exec(NEW + "from firmware.drivers.max30102 import MAX30102\nb = SimBoard()\n"
            "d = MAX30102(b.i2c, clock=b.clock)\nd.reset(); d.check(); d.configure(); d.status()\n"
            "levels = [b.max_int.value()]\nb.clock.sleep_ms(100)\nlevels.append(b.max_int.value())\n"
            "b.clock.sleep_ms(150)\nlevels.append(b.max_int.value())\n"
            "d.read_fifo(); d.status(); levels.append(b.max_int.value())")
    assert vm.eval("levels") == [1, 1, 0, 1]


def test_virtual_time_runs_with_the_bus(vm):
    vm.exec(NEW + "b = SimBoard()\nt = b.clock.ticks_us()\nb.i2c.readfrom_mem(0x57, 0xFF, 1)")
    # two transfers: (1 address + 1 register) + (1 address + 1 data) bytes at 9 clocks, 100 kHz
    assert vm.eval("b.clock.ticks_diff(b.clock.ticks_us(), t)") == 360
    assert vm.eval("list(b.i2c.readfrom_mem(0x57, 0xFF, 1))") == [0x15]


def test_unknown_fault_lists_the_valid_names(vm):
    with pytest.raises(MicroPythonError) as e:
        vm.exec(NEW + "SimBoard(faults=['mlx90614:fire'])")
    assert e.value.type == "ValueError"
    for name in FAULTS:
        assert name in e.value.traceback
    with pytest.raises(ValueError, match="max30102:swapped-leds"):
        SimBoard(faults=["nope"], storage_root="")


FAULT_PROBES = {
    # fault -> MicroPython expression seen by a driver on the faulty board (tests/sim/_faultprobe.py)
    "mlx90614:pec": "fault_of(lambda: mlx_object(b))",
    "mlx90614:nack": "fault_of(lambda: mlx_object(b))",
    "mlx90614:stuck": "fault_of(lambda: mlx_object(b))",
    "mlx90614:error-flag": "fault_of(lambda: mlx_object(b))",
    "max30102:absent": "fault_of(lambda: b.i2c.readfrom_mem(0x57, 0xFF, 1))",
    "max30102:swapped-leds": "swapped(b)",
    "max30102:overflow": "lost(b)",
}
EXPECT = {
    "mlx90614:pec": "pec", "mlx90614:nack": "nack", "mlx90614:stuck": "stuck", "mlx90614:error-flag": "error-flag",
    "max30102:absent": 19, "max30102:swapped-leds": True, "max30102:overflow": True,
}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_reaches_its_model(vm, fault):
    vm.exec(NEW + "from tests.sim._faultprobe import fault_of, lost, mlx_object, swapped\nb = SimBoard()")
    healthy = vm.eval(FAULT_PROBES[fault])
    assert healthy in (None, False), (fault, healthy)
    vm.exec(f"b = SimBoard(faults=[{fault!r}])")
    assert vm.eval("b.faults") == [fault]
    assert vm.eval(FAULT_PROBES[fault]) == EXPECT[fault]


def test_network_in_the_vm(vm):
    vm.exec(NEW + "b = SimBoard()\nn = b.network\n"
            "def tryopen():\n    try:\n        n.open('broker.local', 1883); return 'open'\n"
            "    except OSError as e:\n        return e.args[0]\n")
    assert vm.eval("[n.isconnected(), n.rssi(), tryopen()]") == [False, None, 101]
    assert vm.eval("[n.connect_wifi('clinic', 'pw'), n.isconnected(), n.rssi()]") == [True, True, -60]
    assert vm.eval("tryopen()") == 101  # no sockets inside the VM
    vm.exec("import io\nn.stream_factory = lambda h, p, tls, t: io.BytesIO(b'hello')")
    assert vm.eval("n.open('x', 1).read(5).decode()") == "hello"
    vm.exec("n.wifi_up = False")
    assert vm.eval("[n.isconnected(), tryopen(), n.connect_wifi('clinic', 'pw')]") == [False, 101, False]


def _echo_server(ctx=None):
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve():
        conn, _ = srv.accept()
        if ctx is not None:
            try:
                conn = ctx.wrap_socket(conn, server_side=True)
            except ssl.SSLError:  # the client refused our certificate (the test expects it)
                conn.close()
                srv.close()
                return
        with conn:
            data = conn.recv(1024)
            conn.sendall(data.upper())
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return port, t


def test_network_real_sockets_under_cpython(tmp_path):
    b = SimBoard(storage_root=str(tmp_path / "flash"))
    assert b.network.connect_wifi("clinic", "pw")
    port, t = _echo_server()
    s = b.network.open("127.0.0.1", port, timeout_ms=2000)
    assert s.write(b"ping") == 4
    assert s.read(4) == b"PING"
    assert s.read(4) == b""  # EOF
    s.close()
    t.join(2)


def _make_cert(tmp_path):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("broker.test"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "c.pem").write_bytes(pem)
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return pem


def test_network_tls_verifies_the_server(tmp_path):
    pem = _make_cert(tmp_path)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    b = SimBoard(storage_root=str(tmp_path / "flash"))
    b.network.connect_wifi("clinic", "pw")
    port, t = _echo_server(sctx)
    s = b.network.open("127.0.0.1", port, tls={"ca": pem, "cert": None, "key": None,
                                               "server_hostname": "broker.test"}, timeout_ms=3000)
    s.write(b"secure")
    assert s.read(6) == b"SECURE"
    s.close()
    t.join(2)
    # a server the CA does not vouch for is refused
    other = tmp_path / "other"
    other.mkdir()
    wrong_ca = _make_cert(other)
    port, t = _echo_server(sctx)
    with pytest.raises(ssl.SSLCertVerificationError):
        b.network.open("127.0.0.1", port, tls={"ca": wrong_ca, "server_hostname": "broker.test"}, timeout_ms=3000)


def test_network_timeout_is_an_oserror(tmp_path):
    b = SimBoard(storage_root=str(tmp_path / "flash"))
    b.network.connect_wifi("clinic", "pw")
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        s = b.network.open("127.0.0.1", srv.getsockname()[1], timeout_ms=2000)
        s.settimeout(0.05)
        with pytest.raises(OSError) as e:
            s.read(1)
        assert e.value.errno in (110, getattr(os, "ETIMEDOUT", 110))
        s.close()
    finally:
        srv.close()
