"""SSD1306 128x64 monochrome OLED over I2C (address 0x3C), drawn with MicroPython's ``framebuf``.

The driver *is* a ``framebuf.FrameBuffer`` (MONO_VLSB: one byte holds 8 vertical pixels, least
significant bit on top, pages of 8 rows, exactly the SSD1306's GDDRAM layout), so the firmware
draws with ``fill``, ``text``, ``line``, ``rect``, ``blit``... and then calls ``show()``.

Wire format: every I2C transfer starts with a control byte: 0x00 (Co=0, D/C#=0) makes the rest
of the transfer commands, 0x40 (Co=0, D/C#=1) makes it display data. ``show()`` sets the
column/page window with one command transfer and sends the whole frame in one data transfer from a
preallocated 1025-byte buffer (control byte + 1024 bytes of frame): no allocation per frame. At the
board's 100 kHz a full frame takes about 93 ms on the bus.

On CPython ``framebuf`` comes from ``compat/framebuf.py``, a pixel-exact stand-in.
"""
from micropython import const
import framebuf

from firmware.errors import PartError, bus_fault, code

_CTRL_CMD = const(0x00)
_CTRL_DATA = const(0x40)

_SET_CONTRAST = const(0x81)
_ENTIRE_ON = const(0xA4)     # | 1: every pixel on, ignoring RAM
_NORM_INV = const(0xA6)      # | 1: inverted
_DISP = const(0xAE)          # | 1: display on (0xAE: sleep)
_MEM_ADDR = const(0x20)
_COL_ADDR = const(0x21)
_PAGE_ADDR = const(0x22)
_DEACTIVATE_SCROLL = const(0x2E)
_DISP_START_LINE = const(0x40)
_SEG_REMAP = const(0xA0)
_MUX_RATIO = const(0xA8)
_COM_OUT_DIR = const(0xC0)
_DISP_OFFSET = const(0xD3)
_COM_PIN_CFG = const(0xDA)
_DISP_CLK_DIV = const(0xD5)
_PRECHARGE = const(0xD9)
_VCOM_DESEL = const(0xDB)
_CHARGE_PUMP = const(0x8D)

ADDR = const(0x3C)
WIDTH = const(128)
HEIGHT = const(64)


class SSD1306Error(PartError):
    """The display did not answer. ``fault``: ``"nack"`` (no ACK), ``"stuck"`` (bus held) or
    ``"bus"`` (other bus error); ``errno`` the bus error number."""

    source = "display"


_TEXT = {"nack": "no ACK at the display's address", "stuck": "I2C bus held (timeout)"}


def _fault(e):
    n = code(e)
    f = bus_fault(n)
    return SSD1306Error(f, "ssd1306: " + (_TEXT.get(f) or "I2C error " + str(n)), n)


class SSD1306(framebuf.FrameBuffer):
    """``SSD1306(i2c, addr=0x3C, width=128, height=64, external_vcc=False)``: initialises the
    panel (internal charge pump unless ``external_vcc``), clears it and switches it on. Raises
    ``SSD1306Error`` when the display does not answer."""

    def __init__(self, i2c, addr=ADDR, width=WIDTH, height=HEIGHT, external_vcc=False, init=True):
        self.i2c = i2c
        self.addr = addr
        self.width = width
        self.height = height
        self.pages = height // 8
        self.external_vcc = external_vcc
        # control byte + frame, sent in one transfer; the FrameBuffer draws into bytes 1..
        self._wire = bytearray(1 + width * self.pages)
        self._wire[0] = _CTRL_DATA
        self.buffer = memoryview(self._wire)[1:]
        super().__init__(self.buffer, width, height, framebuf.MONO_VLSB)
        self._window = bytearray((_CTRL_CMD, _COL_ADDR, 0, width - 1, _PAGE_ADDR, 0, self.pages - 1))
        self._cmd2 = bytearray(2)       # control byte + command
        self._cmd3 = bytearray(3)       # control byte + command + argument
        self._cmd2[0] = _CTRL_CMD
        self._cmd3[0] = _CTRL_CMD
        self.is_on = False
        self.inverted = False
        self.contrast_level = 0xFF
        # scratch for big_text: one glyph
        self._glyph_buf = bytearray(8)
        self._glyph = framebuf.FrameBuffer(self._glyph_buf, 8, 8, framebuf.MONO_VLSB)
        if init:
            self.init_display()

    # --- bus ---
    def _write(self, buf):
        try:
            self.i2c.writeto(self.addr, buf)
        except OSError as e:
            raise _fault(e)

    def write_cmd(self, cmd, arg=-1):
        """Send one command byte, with its one-byte argument when ``arg`` >= 0."""
        if arg < 0:
            c = self._cmd2
            c[1] = cmd
        else:
            c = self._cmd3
            c[1] = cmd
            c[2] = arg
        self._write(c)

    def init_display(self):
        """The power-on sequence: display off, horizontal addressing, segment remap and COM scan
        for the usual module mounting, multiplex and COM pins for the height, clock, precharge,
        VCOMH, contrast, RAM shown normally, charge pump, then clear, show and switch on."""
        ext = self.external_vcc
        self._write(bytes((
            _CTRL_CMD,
            _DISP,                              # off while configuring
            _MEM_ADDR, 0x00,                    # horizontal addressing
            _DISP_START_LINE | 0x00,
            _SEG_REMAP | 0x01,                  # column 127 -> SEG0
            _MUX_RATIO, self.height - 1,
            _COM_OUT_DIR | 0x08,                # scan COM[N-1] -> COM0
            _DISP_OFFSET, 0x00,
            _COM_PIN_CFG, 0x02 if self.width > 2 * self.height else 0x12,
            _DISP_CLK_DIV, 0x80,
            _PRECHARGE, 0x22 if ext else 0xF1,
            _VCOM_DESEL, 0x30,                  # 0.83 x Vcc
            _SET_CONTRAST, self.contrast_level,
            _ENTIRE_ON,                         # show RAM
            _NORM_INV,                          # not inverted
            _DEACTIVATE_SCROLL,
            _CHARGE_PUMP, 0x10 if ext else 0x14,
        )))
        self.fill(0)
        self.show()
        self.poweron()

    # --- display control ---
    def poweroff(self):
        """Sleep (display off, ~10 uA); RAM is kept."""
        self.write_cmd(_DISP)
        self.is_on = False

    def poweron(self):
        self.write_cmd(_DISP | 0x01)
        self.is_on = True

    def contrast(self, level):
        """Contrast 0..255 (brightness)."""
        if not 0 <= level <= 255:
            raise ValueError("contrast must be 0..255")
        self.write_cmd(_SET_CONTRAST, level)
        self.contrast_level = level

    def invert(self, on):
        self.write_cmd(_NORM_INV | (1 if on else 0))
        self.inverted = bool(on)

    def show(self):
        """Send the whole frame: window command, then 1024 data bytes in one transfer."""
        self._write(self._window)
        self._write(self._wire)

    # --- drawing helpers beyond framebuf ---
    def big_text(self, s, x, y, scale=2, c=1):
        """Text at ``scale`` x the 8x8 font (each font pixel a scale x scale block); returns the
        x after the last character. Same glyphs as ``text`` (MicroPython's built-in font)."""
        g = self._glyph
        step = 8 * scale
        for ch in s:
            g.fill(0)
            g.text(ch, 0, 0, 1)
            for gx in range(8):
                col = self._glyph_buf[gx]
                gy = 0
                while col:
                    if col & 1:
                        self.fill_rect(x + gx * scale, y + gy * scale, scale, scale, c)
                    col >>= 1
                    gy += 1
            x += step
        return x
