"""In-VM helper of the workflow tests (exec'd in the MicroPython VM): what the OLED shows, read
back from the panel model's pixels and compared with the expected text rendered by the same font
into a scratch SSD1306 buffer (no bus). Set ``panel`` (the SSD1306 model, ``board.oled``) first."""
from firmware import ui as U  # noqa: F401  (the tests name rows and columns as U.ROW_*)
from firmware.drivers.ssd1306 import SSD1306

scratch = SSD1306(None, init=False)
panel = None


def shows(text, x, y, big=False, inv=False):
    """True when the panel shows ``text`` at (x, y), pixel for pixel (``big``: 16 px font,
    ``inv``: light background)."""
    scratch.fill(1 if inv else 0)
    c = 0 if inv else 1
    if big:
        scratch.big_text(text, x, y, 2, c)
    else:
        scratch.text(text, x, y, c)
    w = len(text) * (16 if big else 8)
    h = 16 if big else 8
    for yy in range(y, y + h):
        for xx in range(x, min(x + w, 128)):
            if panel.pixel(xx, yy) != scratch.pixel(xx, yy):
                return False
    return True


def lit(x, y, w, h):
    """How many pixels of the rectangle are lit on the panel."""
    n = 0
    for yy in range(y, y + h):
        for xx in range(x, x + w):
            n += panel.pixel(xx, yy)
    return n
