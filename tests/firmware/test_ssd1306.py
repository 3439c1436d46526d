"""SSD1306 OLED: the driver against the register-level model on real MicroPython, the CPython
framebuf stand-in against MicroPython's own framebuf (pixel by pixel), and host screenshots."""
import random

import pytest

from host import screenshot
from host.mpvm import MicroPythonError

SETUP = """
from sim.hardware.clock import VirtualClock
from sim.hardware.i2c import VirtualI2C
from sim.hardware.ssd1306 import SSD1306Model
from firmware.drivers.ssd1306 import SSD1306
clock = VirtualClock(); bus = VirtualI2C(clock, 100000)
model = bus.attach(0x3C, SSD1306Model())
"""


def _ops(seed: int, n: int = 120) -> str:
    """A random drawing program (as Python source) exercising every framebuf primitive with
    clipping at and beyond the edges."""
    r = random.Random(seed)
    c = lambda: r.choice((0, 1, 1))  # noqa: E731
    xy = lambda: (r.randint(-20, 147), r.randint(-12, 75))  # noqa: E731
    lines = ["fb.fill(0)"]
    for _ in range(n):
        k = r.choice(("pixel", "hline", "vline", "line", "rect", "frect", "text", "fill_rect", "scroll",
                      "blit", "line"))
        x, y = xy()
        if k == "pixel":
            lines.append(f"fb.pixel({x}, {y}, {c()})")
        elif k == "hline":
            lines.append(f"fb.hline({x}, {y}, {r.randint(-5, 140)}, {c()})")
        elif k == "vline":
            lines.append(f"fb.vline({x}, {y}, {r.randint(-5, 70)}, {c()})")
        elif k == "line":
            x2, y2 = xy()
            lines.append(f"fb.line({x}, {y}, {x2}, {y2}, {c()})")
        elif k in ("rect", "frect"):
            lines.append(f"fb.rect({x}, {y}, {r.randint(-3, 90)}, {r.randint(-3, 50)}, {c()}, {k == 'frect'})")
        elif k == "fill_rect":
            lines.append(f"fb.fill_rect({x}, {y}, {r.randint(0, 40)}, {r.randint(0, 30)}, {c()})")
        elif k == "text":
            s = "".join(chr(r.randint(32, 127)) for _ in range(r.randint(1, 12)))
            lines.append(f"fb.text({s!r}, {x}, {y}, {c()})")
        elif k == "scroll":
            lines.append(f"fb.scroll({r.randint(-9, 9)}, {r.randint(-9, 9)})")
        elif k == "blit":
            lines.append(f"fb.blit(sprite, {x}, {y}, {r.choice((-1, 0, 1))})")
    return "\n".join(lines)


DRAW_PRELUDE = """
import framebuf
buf = bytearray(1024)
fb = framebuf.FrameBuffer(buf, 128, 64, framebuf.MONO_VLSB)
sbuf = bytearray(2 * 16)
sprite = framebuf.FrameBuffer(sbuf, 16, 13, framebuf.MONO_VLSB)
sprite.fill(0); sprite.rect(0, 0, 16, 13, 1); sprite.line(0, 0, 15, 12, 1); sprite.text('A', 4, 2, 1)
"""


def _cpython_render(program: str) -> bytes:
    ns: dict = {}
    exec(DRAW_PRELUDE + program, ns)  # noqa: S102 - our own generated drawing program
    import framebuf

    assert framebuf.__file__.endswith("compat/framebuf.py")
    return bytes(ns["buf"])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compat_framebuf_matches_micropython_pixel_for_pixel(vm, seed):
    program = _ops(seed)
    vm.exec(DRAW_PRELUDE + program)
    in_vm = bytes.fromhex(vm.eval("buf.hex()"))
    on_cpython = _cpython_render(program)
    diff = [(x, y) for y in range(64) for x in range(128)
            if ((in_vm[(y >> 3) * 128 + x] ^ on_cpython[(y >> 3) * 128 + x]) >> (y & 7)) & 1]
    assert not diff, f"{len(diff)} pixels differ, first {diff[:5]}"
    assert sum(bin(b).count("1") for b in in_vm) > 200  # the program really drew something


def test_compat_font_is_micropythons_font_for_every_character(vm):
    text = "".join(chr(c) for c in range(32, 128))
    program = "\n".join(
        ["fb.fill(0)"] + [f"fb.text({text[i:i + 16]!r}, 0, {8 * (i // 16)}, 1)" for i in range(0, 96, 16)]
        + ["fb.text('é°\\t~', 0, 56, 1)", "fb.text('xy', 124, 60, 1)", "fb.pixel(5, 5, fb.pixel(0, 1))"])
    vm.exec(DRAW_PRELUDE + program)
    assert bytes.fromhex(vm.eval("buf.hex()")) == _cpython_render(program)
    assert vm.eval("[fb.pixel(-1, 0), fb.pixel(128, 0), fb.pixel(3, 64)]") == [None, None, None]


def test_driver_initialises_the_panel_and_shows_text(vm):
    vm.exec(SETUP + "d = SSD1306(bus)\nd.text('SpO2 98%', 0, 0)\nd.big_text('36.8', 0, 24, 2)\nd.show()")
    state = vm.eval("[model.display_on, model.charge_pump, model.mode, model.contrast, model.seg_remap, "
                    "model.com_remap, model.mux, model.unknown, model.frames]")
    assert state == [True, True, 0, 255, True, True, 63, [], 2]
    # what the panel shows is exactly the driver's frame buffer
    assert vm.eval("model.frame() == d.buffer") is True
    # and it is the text: compare with framebuf drawing the same text
    vm.exec("import framebuf\nref = bytearray(1024)\nf = framebuf.FrameBuffer(ref, 128, 64, framebuf.MONO_VLSB)\n"
            "f.text('SpO2 98%', 0, 0, 1)")
    assert vm.eval("[model.pixel(x, y) for y in range(8) for x in range(64)] == "
                   "[f.pixel(x, y) for y in range(8) for x in range(64)]") is True
    assert vm.eval("sum(model.pixel(x, y) for y in range(24, 40) for x in range(64))") > 100


def test_display_control_is_seen_by_the_panel(vm):
    vm.exec(SETUP + "d = SSD1306(bus)\nd.fill_rect(0, 0, 10, 10, 1)\nd.show()")
    assert vm.eval("[model.pixel(0, 0), model.pixel(20, 20)]") == [1, 0]
    vm.exec("d.invert(True)")
    assert vm.eval("[model.pixel(0, 0), model.pixel(20, 20), model.inverted]") == [0, 1, True]
    vm.exec("d.invert(False)\nd.contrast(0x20)")
    assert vm.eval("model.contrast") == 0x20
    vm.exec("d.poweroff()")
    assert vm.eval("[model.display_on, model.lit_count(), list(bus.readfrom(0x3C, 1))]") == [False, 0, [0x40]]
    vm.exec("d.poweron()")
    assert vm.eval("[model.display_on, model.lit_count()]") == [True, 100]
    with pytest.raises(MicroPythonError) as e:
        vm.exec("d.contrast(300)")
    assert e.value.type == "ValueError"


def test_show_allocates_nothing(vm):
    """show() sends from preallocated buffers: proven with the heap locked (any allocation raises
    MemoryError). The bus here is a byte-counting sink so that only the driver's code runs."""
    vm.exec("""
from firmware.drivers.ssd1306 import SSD1306
from tests.firmware._heap import locked
class Sink:
    def __init__(self): self.n = 0; self.writes = 0
    def writeto(self, addr, buf, stop=True): self.n += len(buf); self.writes += 1; return len(buf)
sink = Sink()
d = SSD1306(sink)
d.text('x', 0, 0)
sink.n = 0; sink.writes = 0
def frames():
    n = 10
    while n:
        d.show()
        n -= 1
""")
    assert vm.eval("locked(frames)") == [None, "ok", 0]
    assert vm.eval("[sink.n, sink.writes]") == [10 * (7 + 1025), 20]


def test_absent_display_raises_a_named_fault(vm):
    vm.exec(SETUP + "model.present = False\n"
            "try:\n    SSD1306(bus); f = None\nexcept Exception as e:\n    f = [type(e).__name__, e.fault, e.errno]")
    assert vm.eval("f") == ["SSD1306Error", "nack", 19]


def test_model_follows_page_vertical_modes_and_split_commands(vm):
    """Other drivers' styles: one command per transfer with Co=1 control bytes (micropython-lib),
    page addressing with 0xB0/0x00/0x10 pointers, vertical addressing."""
    vm.exec(SETUP + """
def cmd(*bs):
    for b in bs: bus.writeto(0x3C, bytes((0x80, b)))
cmd(0xA1, 0xC8, 0x8D, 0x14, 0xAF)            # remap, pump, on; page addressing by default
cmd(0xB2, 0x05, 0x11)                         # page 2, column 0x15
bus.writeto(0x3C, b'\\x40' + bytes((0xFF, 0x01)))
cmd(0x20, 0x01, 0x21, 100, 101, 0x22, 6, 7)   # vertical mode, 2x2 window
bus.writeto(0x3C, b'\\x40\\x01\\x80\\x01\\x80')
bus.writeto(0x3C, bytes((0xC0, 0x03)))        # Co=1, data: one byte at the wrapped pointer
""")
    # page 2 = rows 16..23; column 0x15 = 21 full, column 22 only the top row
    assert vm.eval("[model.pixel(21, y) for y in range(15, 25)]") == [0, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    assert vm.eval("[model.pixel(22, 16), model.pixel(22, 17)]") == [1, 0]
    # vertical: (col 100, page 6) (col 100, page 7) (col 101, page 6) (col 101, page 7), then wrap
    assert vm.eval("[model.pixel(100, 48), model.pixel(100, 63), model.pixel(101, 48), model.pixel(101, 63)]") \
        == [1, 1, 1, 1]
    assert vm.eval("[model.pixel(100, 49), model.gddram[6 * 128 + 100]]") == [1, 3]


def test_model_orientation_follows_remap(vm):
    vm.exec(SETUP + "d = SSD1306(bus)\nd.pixel(0, 0, 1)\nd.show()")
    assert vm.eval("model.pixel(0, 0)") == 1
    vm.exec("d.write_cmd(0xA0)\nd.write_cmd(0xC0)")  # default scan: the image turns by 180 degrees
    assert vm.eval("[model.pixel(0, 0), model.pixel(127, 63)]") == [0, 1]


def test_screenshot_png_and_ascii(vm, tmp_path):
    vm.exec(SETUP + "d = SSD1306(bus)\nd.text('nabd', 0, 0)\nd.fill_rect(64, 32, 8, 8, 1)\nd.show()")
    frame = vm.eval("model.frame().hex()")
    png = screenshot.to_png(frame, tmp_path / "s.png", scale=4)
    w, h, rows = screenshot.read_png(png)
    margin = 16
    assert (w, h) == (128 * 4 + 2 * margin, 64 * 4 + 2 * margin)

    def px(x, y):
        return rows[y][3 * x:3 * x + 3]

    assert px(0, 0) == bytes(screenshot.BEZEL)
    assert px(margin + 64 * 4 + 1, margin + 32 * 4 + 1) == bytes(screenshot.LIT)   # lit block
    assert px(margin + 100 * 4 + 1, margin + 50 * 4 + 1) == bytes(screenshot.BACKGROUND)
    art = screenshot.ascii_art(frame).splitlines()
    assert len(art) == 32 + 2 and all(len(line) == 130 for line in art)
    assert art[17][65:73] == "████████"  # rows 32..33 of the block
    with pytest.raises(ValueError):
        screenshot.frame_to_rows(b"\x00" * 10)
