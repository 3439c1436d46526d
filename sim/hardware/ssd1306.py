"""Register-level model of the SSD1306 OLED controller (128x64) on the virtual I2C bus.

What the model honours, from the SSD1306 datasheet (rev 1.1):

- I2C framing: each write starts with a control byte; Co=1 means one byte follows and then another
  control byte, Co=0 means every remaining byte of the transfer is of the kind D/C# says (0:
  commands, 1: GDDRAM data). Multi-byte commands may be split across transfers (the parameters
  arrive as command bytes), as micropython-lib's driver sends them.
- GDDRAM: 8 pages x 128 columns, one byte = 8 vertical pixels, LSB on top. Page (default),
  horizontal and vertical addressing modes with the column (0x21) and page (0x22) windows, and
  page-mode pointers (0xB0-0xB7, 0x00-0x0F, 0x10-0x1F).
- Display state: on/off (0xAF/0xAE), contrast (0x81), normal/inverse (0xA6/0xA7), entire display on
  (0xA5), segment remap (0xA0/0xA1), COM scan direction (0xC0/0xC8), start line (0x40-0x7F),
  display offset (0xD3), multiplex ratio (0xA8), charge pump (0x8D: without it the panel of a
  module with no external VCC stays dark). Scrolling commands are parsed; scrolling is not drawn.
- A read returns the status byte (bit 6 set while the display is off).

``frame()`` is what the panel shows, in GDDRAM layout (1024 bytes, MONO_VLSB), for a module mounted
the usual way (segment remap and reversed COM scan give an upright image); ``pixel(x, y)`` and
``pixels()`` read it for tests. PNG and ASCII rendering live host-side (``host/screenshot.py``).
"""
from micropython import const

_HORIZONTAL = const(0)
_VERTICAL = const(1)
_PAGE = const(2)

# parameter bytes that follow a command byte
_NARGS = {0x81: 1, 0x20: 1, 0x21: 2, 0x22: 2, 0xA8: 1, 0xD3: 1, 0xDA: 1, 0xD5: 1, 0xD9: 1,
          0xDB: 1, 0x8D: 1, 0xAD: 1, 0xA3: 2, 0x26: 6, 0x27: 6, 0x29: 5, 0x2A: 5, 0xD6: 1}


class SSD1306Model:
    def __init__(self, width=128, height=64, addr=0x3C):
        self.width = width
        self.height = height
        self.pages = height // 8
        self.addr = addr
        self.present = True
        self.gddram = bytearray(width * self.pages)
        self._frame = bytearray(width * self.pages)
        self._args = bytearray(6)
        self._status = bytearray(1)
        self.commands = 0        # command bytes received (parameters included)
        self.data_bytes = 0      # GDDRAM bytes written
        self.frames = 0          # data transfers (a ``show()`` is one)
        self.unknown = []        # command bytes the model does not know
        self.reset()

    def reset(self):
        """Power-on (RES#) state: display off, page addressing, contrast 0x7F, no remap."""
        self.display_on = False
        self.contrast = 0x7F
        self.inverted = False
        self.entire_on = False
        self.mode = _PAGE
        self.col = 0
        self.page = 0
        self.col_start = 0
        self.col_end = self.width - 1
        self.page_start = 0
        self.page_end = self.pages - 1
        self.page_col_start = 0
        self.seg_remap = False
        self.com_remap = False
        self.start_line = 0
        self.offset = 0
        self.mux = self.height - 1
        self.com_pins = 0x12
        self.charge_pump = False
        self.scrolling = False
        self.precharge = 0x22
        self.vcomh = 0x20
        self.clock_div = 0x80
        self._pending = -1
        self._need = 0
        self._nargs = 0

    # --- wire ---
    def i2c_write(self, data, stop):
        if not self.present:
            raise OSError(19)
        n = len(data)
        i = 0
        while i < n:
            ctrl = data[i]
            i += 1
            if ctrl & 0x80:             # Co=1: one byte, then another control byte
                if i < n:
                    if ctrl & 0x40:
                        self._data(data[i])
                    else:
                        self._command(data[i])
                    i += 1
                continue
            if ctrl & 0x40:
                if i < n:
                    self.frames += 1
                while i < n:
                    self._data(data[i])
                    i += 1
            else:
                while i < n:
                    self._command(data[i])
                    i += 1

    def i2c_read(self, buf):
        if not self.present:
            raise OSError(19)
        s = 0 if self.display_on else 0x40
        for i in range(len(buf)):
            buf[i] = s

    # --- commands ---
    def _command(self, b):
        self.commands += 1
        if self._need:
            self._args[self._nargs] = b
            self._nargs += 1
            if self._nargs == self._need:
                self._need = 0
                self._execute(self._pending)
            return
        n = _NARGS.get(b, 0)
        if n:
            self._pending = b
            self._need = n
            self._nargs = 0
            return
        if b == 0xAE or b == 0xAF:
            self.display_on = b == 0xAF
        elif b == 0xA4 or b == 0xA5:
            self.entire_on = b == 0xA5
        elif b == 0xA6 or b == 0xA7:
            self.inverted = b == 0xA7
        elif b == 0xA0 or b == 0xA1:
            self.seg_remap = b == 0xA1
        elif b == 0xC0 or b == 0xC8:
            self.com_remap = b == 0xC8
        elif 0x40 <= b <= 0x7F:
            self.start_line = b & 0x3F
        elif 0xB0 <= b <= 0xB7:
            self.page = b & 0x07
        elif b <= 0x0F:
            self.page_col_start = (self.page_col_start & 0xF0) | b
            self.col = self.page_col_start
        elif b <= 0x1F:
            self.page_col_start = (self.page_col_start & 0x0F) | ((b & 0x0F) << 4)
            self.col = self.page_col_start
        elif b == 0x2E:
            self.scrolling = False
        elif b == 0x2F:
            self.scrolling = True
        elif b == 0xE3:
            pass                                    # NOP
        else:
            self.unknown.append(b)

    def _execute(self, cmd):
        a = self._args
        if cmd == 0x81:
            self.contrast = a[0]
        elif cmd == 0x20:
            self.mode = a[0] & 0x03 if (a[0] & 0x03) != 3 else self.mode
        elif cmd == 0x21:
            self.col_start = a[0] & 0x7F
            self.col_end = a[1] & 0x7F
            self.col = self.col_start
        elif cmd == 0x22:
            self.page_start = a[0] & 0x07
            self.page_end = a[1] & 0x07
            self.page = self.page_start
        elif cmd == 0xA8:
            if (a[0] & 0x3F) >= 15:
                self.mux = a[0] & 0x3F
        elif cmd == 0xD3:
            self.offset = a[0] & 0x3F
        elif cmd == 0xDA:
            self.com_pins = a[0]
        elif cmd == 0xD5:
            self.clock_div = a[0]
        elif cmd == 0xD9:
            self.precharge = a[0]
        elif cmd == 0xDB:
            self.vcomh = a[0]
        elif cmd == 0x8D:
            self.charge_pump = bool(a[0] & 0x04)
        # 0xAD (IREF), 0xA3, scroll set-ups: accepted, no visible effect in the model

    # --- data ---
    def _data(self, b):
        self.data_bytes += 1
        self.gddram[self.page * self.width + self.col] = b
        mode = self.mode
        if mode == _HORIZONTAL:
            self.col += 1
            if self.col > self.col_end:
                self.col = self.col_start
                self.page += 1
                if self.page > self.page_end:
                    self.page = self.page_start
        elif mode == _VERTICAL:
            self.page += 1
            if self.page > self.page_end:
                self.page = self.page_start
                self.col += 1
                if self.col > self.col_end:
                    self.col = self.col_start
        else:
            self.col += 1
            if self.col >= self.width:
                self.col = self.page_col_start

    # --- what the panel shows ---
    def lit(self):
        """True when the panel emits light at all (display on and its supply pumped)."""
        return self.display_on and self.charge_pump

    def pixel(self, x, y):
        """1 when the pixel at column ``x``, row ``y`` (0,0 top left) is lit."""
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise IndexError("pixel out of the panel")
        if not self.lit():
            return 0
        if self.entire_on:
            return 1
        # row y of the upright panel is driven by COM y (reversed scan) or COM N-1-y (normal scan)
        com = y if self.com_remap else self.height - 1 - y
        if com > self.mux:
            return 0
        row = (com + self.start_line + self.offset) % self.height
        col = x if self.seg_remap else self.width - 1 - x
        v = (self.gddram[(row >> 3) * self.width + col] >> (row & 7)) & 1
        return v ^ 1 if self.inverted else v

    def frame(self):
        """The panel's image as 1024 bytes in GDDRAM layout (MONO_VLSB). A buffer the model
        reuses: copy it to keep it."""
        f = self._frame
        w = self.width
        for p in range(self.pages):
            for x in range(w):
                v = 0
                for bit in range(8):
                    if self.pixel(x, p * 8 + bit):
                        v |= 1 << bit
                f[p * w + x] = v
        return f

    def pixels(self):
        """Rows of the panel's image: a list of ``height`` bytearrays of ``width`` 0/1 values."""
        return [bytearray(self.pixel(x, y) for x in range(self.width)) for y in range(self.height)]

    def lit_count(self):
        n = 0
        for b in self.frame():
            while b:
                n += b & 1
                b >>= 1
        return n
