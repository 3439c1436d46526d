"""CPython stand-in for MicroPython's built-in ``framebuf`` module (MONO_VLSB only).

The firmware's display code (``firmware.drivers.ssd1306``) draws through ``framebuf`` so that on
the device and in the MicroPython VM the interpreter's own C implementation does the work. Under
CPython (the virtual device with real sockets, host tools) this module reproduces it pixel for
pixel: the same clipping rules, the same Bresenham line, the same 8x8 font (MicroPython's
``font_petme128_8x8``, characters 32..127; any other byte of the UTF-8 text draws glyph 127), the
same ``blit`` and ``scroll`` semantics. ``tests/firmware/test_ssd1306.py`` compares both renderings
pixel by pixel. On MicroPython the built-in module is used and this file is never seen.

Formats other than MONO_VLSB raise ``ValueError``: nabd's display is a monochrome SSD1306.
"""

MONO_VLSB = 0
MVLSB = 0
RGB565 = 1
GS4_HMSB = 2
MONO_HLSB = 3
MONO_HMSB = 4
GS2_HMSB = 5
GS8 = 6

# MicroPython's font_petme128_8x8: 8 column bytes per glyph, LSB at the top, glyphs 32..127.
_FONT = (
    b"\x00\x00\x00\x00\x00\x00\x00\x00"  # ' '
    b"\x00\x00\x00\x4f\x4f\x00\x00\x00"  # '!'
    b"\x00\x07\x07\x00\x00\x07\x07\x00"  # '"'
    b"\x14\x7f\x7f\x14\x14\x7f\x7f\x14"  # '#'
    b"\x00\x24\x2e\x6b\x6b\x3a\x12\x00"  # '$'
    b"\x00\x63\x33\x18\x0c\x66\x63\x00"  # '%'
    b"\x00\x32\x7f\x4d\x4d\x77\x72\x50"  # '&'
    b"\x00\x00\x00\x04\x06\x03\x01\x00"  # "'"
    b"\x00\x00\x1c\x3e\x63\x41\x00\x00"  # '('
    b"\x00\x00\x41\x63\x3e\x1c\x00\x00"  # ')'
    b"\x08\x2a\x3e\x1c\x1c\x3e\x2a\x08"  # '*'
    b"\x00\x08\x08\x3e\x3e\x08\x08\x00"  # '+'
    b"\x00\x00\x80\xe0\x60\x00\x00\x00"  # ','
    b"\x00\x08\x08\x08\x08\x08\x08\x00"  # '-'
    b"\x00\x00\x00\x60\x60\x00\x00\x00"  # '.'
    b"\x00\x40\x60\x30\x18\x0c\x06\x02"  # '/'
    b"\x00\x3e\x7f\x49\x45\x7f\x3e\x00"  # '0'
    b"\x00\x40\x44\x7f\x7f\x40\x40\x00"  # '1'
    b"\x00\x62\x73\x51\x49\x4f\x46\x00"  # '2'
    b"\x00\x22\x63\x49\x49\x7f\x36\x00"  # '3'
    b"\x00\x18\x18\x14\x16\x7f\x7f\x10"  # '4'
    b"\x00\x27\x67\x45\x45\x7d\x39\x00"  # '5'
    b"\x00\x3e\x7f\x49\x49\x7b\x32\x00"  # '6'
    b"\x00\x03\x03\x79\x7d\x07\x03\x00"  # '7'
    b"\x00\x36\x7f\x49\x49\x7f\x36\x00"  # '8'
    b"\x00\x26\x6f\x49\x49\x7f\x3e\x00"  # '9'
    b"\x00\x00\x00\x24\x24\x00\x00\x00"  # ':'
    b"\x00\x00\x80\xe4\x64\x00\x00\x00"  # ';'
    b"\x00\x08\x1c\x36\x63\x41\x41\x00"  # '<'
    b"\x00\x14\x14\x14\x14\x14\x14\x00"  # '='
    b"\x00\x41\x41\x63\x36\x1c\x08\x00"  # '>'
    b"\x00\x02\x03\x51\x59\x0f\x06\x00"  # '?'
    b"\x00\x3e\x7f\x41\x4d\x4f\x2e\x00"  # '@'
    b"\x00\x7c\x7e\x0b\x0b\x7e\x7c\x00"  # 'A'
    b"\x00\x7f\x7f\x49\x49\x7f\x36\x00"  # 'B'
    b"\x00\x3e\x7f\x41\x41\x63\x22\x00"  # 'C'
    b"\x00\x7f\x7f\x41\x63\x3e\x1c\x00"  # 'D'
    b"\x00\x7f\x7f\x49\x49\x41\x41\x00"  # 'E'
    b"\x00\x7f\x7f\x09\x09\x01\x01\x00"  # 'F'
    b"\x00\x3e\x7f\x41\x49\x7b\x3a\x00"  # 'G'
    b"\x00\x7f\x7f\x08\x08\x7f\x7f\x00"  # 'H'
    b"\x00\x00\x41\x7f\x7f\x41\x00\x00"  # 'I'
    b"\x00\x20\x60\x41\x7f\x3f\x01\x00"  # 'J'
    b"\x00\x7f\x7f\x1c\x36\x63\x41\x00"  # 'K'
    b"\x00\x7f\x7f\x40\x40\x40\x40\x00"  # 'L'
    b"\x00\x7f\x7f\x06\x0c\x06\x7f\x7f"  # 'M'
    b"\x00\x7f\x7f\x0e\x1c\x7f\x7f\x00"  # 'N'
    b"\x00\x3e\x7f\x41\x41\x7f\x3e\x00"  # 'O'
    b"\x00\x7f\x7f\x09\x09\x0f\x06\x00"  # 'P'
    b"\x00\x1e\x3f\x21\x61\x7f\x5e\x00"  # 'Q'
    b"\x00\x7f\x7f\x19\x39\x6f\x46\x00"  # 'R'
    b"\x00\x26\x6f\x49\x49\x7b\x32\x00"  # 'S'
    b"\x00\x01\x01\x7f\x7f\x01\x01\x00"  # 'T'
    b"\x00\x3f\x7f\x40\x40\x7f\x3f\x00"  # 'U'
    b"\x00\x1f\x3f\x60\x60\x3f\x1f\x00"  # 'V'
    b"\x00\x7f\x7f\x30\x18\x30\x7f\x7f"  # 'W'
    b"\x00\x63\x77\x1c\x1c\x77\x63\x00"  # 'X'
    b"\x00\x07\x0f\x78\x78\x0f\x07\x00"  # 'Y'
    b"\x00\x61\x71\x59\x4d\x47\x43\x00"  # 'Z'
    b"\x00\x00\x7f\x7f\x41\x41\x00\x00"  # '['
    b"\x00\x02\x06\x0c\x18\x30\x60\x40"  # '\\'
    b"\x00\x00\x41\x41\x7f\x7f\x00\x00"  # ']'
    b"\x00\x08\x0c\x06\x06\x0c\x08\x00"  # '^'
    b"\xc0\xc0\xc0\xc0\xc0\xc0\xc0\xc0"  # '_'
    b"\x00\x00\x01\x03\x06\x04\x00\x00"  # '`'
    b"\x00\x20\x74\x54\x54\x7c\x78\x00"  # 'a'
    b"\x00\x7f\x7f\x44\x44\x7c\x38\x00"  # 'b'
    b"\x00\x38\x7c\x44\x44\x6c\x28\x00"  # 'c'
    b"\x00\x38\x7c\x44\x44\x7f\x7f\x00"  # 'd'
    b"\x00\x38\x7c\x54\x54\x5c\x58\x00"  # 'e'
    b"\x00\x08\x7e\x7f\x09\x03\x02\x00"  # 'f'
    b"\x00\x98\xbc\xa4\xa4\xfc\x7c\x00"  # 'g'
    b"\x00\x7f\x7f\x04\x04\x7c\x78\x00"  # 'h'
    b"\x00\x00\x00\x7d\x7d\x00\x00\x00"  # 'i'
    b"\x00\x40\xc0\x80\x80\xfd\x7d\x00"  # 'j'
    b"\x00\x7f\x7f\x30\x38\x6c\x44\x00"  # 'k'
    b"\x00\x00\x41\x7f\x7f\x40\x00\x00"  # 'l'
    b"\x00\x7c\x7c\x18\x30\x18\x7c\x7c"  # 'm'
    b"\x00\x7c\x7c\x04\x04\x7c\x78\x00"  # 'n'
    b"\x00\x38\x7c\x44\x44\x7c\x38\x00"  # 'o'
    b"\x00\xfc\xfc\x24\x24\x3c\x18\x00"  # 'p'
    b"\x00\x18\x3c\x24\x24\xfc\xfc\x00"  # 'q'
    b"\x00\x7c\x7c\x04\x04\x0c\x08\x00"  # 'r'
    b"\x00\x48\x5c\x54\x54\x74\x20\x00"  # 's'
    b"\x04\x04\x3f\x7f\x44\x64\x20\x00"  # 't'
    b"\x00\x3c\x7c\x40\x40\x7c\x3c\x00"  # 'u'
    b"\x00\x1c\x3c\x60\x60\x3c\x1c\x00"  # 'v'
    b"\x00\x1c\x7c\x30\x18\x30\x7c\x1c"  # 'w'
    b"\x00\x44\x6c\x38\x38\x6c\x44\x00"  # 'x'
    b"\x00\x9c\xbc\xa0\xa0\xfc\x7c\x00"  # 'y'
    b"\x00\x44\x64\x74\x5c\x4c\x44\x00"  # 'z'
    b"\x00\x08\x08\x3e\x77\x41\x41\x00"  # '{'
    b"\x00\x00\x00\xff\xff\x00\x00\x00"  # '|'
    b"\x00\x41\x41\x77\x3e\x08\x08\x00"  # '}'
    b"\x00\x02\x03\x01\x03\x02\x03\x01"  # '~'
    b"\xaa\x55\xaa\x55\xaa\x55\xaa\x55"  # '\x7f'
)


class FrameBuffer:
    """``FrameBuffer(buffer, width, height, format, stride=width)`` over a writable buffer of at
    least ``((height + 7) // 8) * stride`` bytes (MONO_VLSB: one byte holds 8 vertical pixels,
    least significant bit on top)."""

    def __init__(self, buffer, width, height, format, stride=None):
        if format != MONO_VLSB:
            raise ValueError("invalid format (only MONO_VLSB in the CPython stand-in)")
        if width < 1 or height < 1:
            raise ValueError("invalid size")
        stride = width if stride is None else stride
        buf = memoryview(buffer)
        if buf.readonly:
            raise TypeError("object with buffer protocol required (writable)")
        buf = buf.cast("B") if buf.format != "B" else buf
        if len(buf) < ((height + 7) // 8) * stride:
            raise ValueError("buffer too small")
        self._buf = buf
        self.width = width
        self.height = height
        self.stride = stride

    # --- primitives (as framebuf.c's mvlsb_* functions) ---
    def _set(self, x, y, col):
        i = (y >> 3) * self.stride + x
        bit = 1 << (y & 7)
        if col:
            self._buf[i] |= bit
        else:
            self._buf[i] &= ~bit & 0xFF

    def _get(self, x, y):
        return (self._buf[(y >> 3) * self.stride + x] >> (y & 7)) & 1

    def _fill_rect(self, x, y, w, h, col):
        if h < 1 or w < 1 or x + w <= 0 or y + h <= 0 or y >= self.height or x >= self.width:
            return
        xend = min(self.width, x + w)
        yend = min(self.height, y + h)
        x = max(x, 0)
        y = max(y, 0)
        buf = self._buf
        stride = self.stride
        for yy in range(y, yend):
            base = (yy >> 3) * stride
            bit = 1 << (yy & 7)
            if col:
                for i in range(base + x, base + xend):
                    buf[i] |= bit
            else:
                mask = ~bit & 0xFF
                for i in range(base + x, base + xend):
                    buf[i] &= mask

    # --- public API ---
    def fill(self, c):
        self._fill_rect(0, 0, self.width, self.height, c)

    def fill_rect(self, x, y, w, h, c):
        self._fill_rect(x, y, w, h, c)

    def pixel(self, x, y, c=None):
        if 0 <= x < self.width and 0 <= y < self.height:
            if c is None:
                return self._get(x, y)
            self._set(x, y, c)
        return None

    def hline(self, x, y, w, c):
        self._fill_rect(x, y, w, 1, c)

    def vline(self, x, y, h, c):
        self._fill_rect(x, y, 1, h, c)

    def rect(self, x, y, w, h, c, f=False):
        if f:
            self._fill_rect(x, y, w, h, c)
        else:
            self._fill_rect(x, y, w, 1, c)
            self._fill_rect(x, y + h - 1, w, 1, c)
            self._fill_rect(x, y, 1, h, c)
            self._fill_rect(x + w - 1, y, 1, h, c)

    def line(self, x1, y1, x2, y2, c):
        dx = x2 - x1
        if dx > 0:
            sx = 1
        else:
            dx = -dx
            sx = -1
        dy = y2 - y1
        if dy > 0:
            sy = 1
        else:
            dy = -dy
            sy = -1
        steep = dy > dx
        if steep:
            x1, y1 = y1, x1
            dx, dy = dy, dx
            sx, sy = sy, sx
        e = 2 * dy - dx
        w, h = self.width, self.height
        for _ in range(dx):
            if steep:
                if 0 <= y1 < w and 0 <= x1 < h:
                    self._set(y1, x1, c)
            elif 0 <= x1 < w and 0 <= y1 < h:
                self._set(x1, y1, c)
            while e >= 0:
                y1 += sy
                e -= 2 * dx
            x1 += sx
            e += 2 * dy
        if 0 <= x2 < w and 0 <= y2 < h:
            self._set(x2, y2, c)

    def text(self, s, x, y, c=1):
        if not isinstance(s, (str, bytes)):
            s = str(s)
        data = s.encode() if isinstance(s, str) else s
        w, h = self.width, self.height
        for ch in data:
            if ch < 32 or ch > 127:
                ch = 127
            off = (ch - 32) * 8
            for j in range(8):
                if 0 <= x < w:
                    col = _FONT[off + j]
                    yy = y
                    while col:
                        if col & 1 and 0 <= yy < h:
                            self._set(x, yy, c)
                        col >>= 1
                        yy += 1
                x += 1

    def blit(self, fbuf, x, y, key=-1, palette=None):
        if not isinstance(fbuf, FrameBuffer):
            # (buffer, width, height, format[, stride]) as MicroPython accepts
            fbuf = FrameBuffer(*fbuf)
        if x >= self.width or y >= self.height or -x >= fbuf.width or -y >= fbuf.height:
            return
        x0 = max(0, x)
        y0 = max(0, y)
        x1 = max(0, -x)
        y1 = max(0, -y)
        x0end = min(self.width, x + fbuf.width)
        y0end = min(self.height, y + fbuf.height)
        while y0 < y0end:
            cx1 = x1
            for cx0 in range(x0, x0end):
                col = fbuf._get(cx1, y1)
                if palette is not None:
                    col = palette._get(col, 0)
                if col != key:
                    self._set(cx0, y0, col)
                cx1 += 1
            y1 += 1
            y0 += 1

    def scroll(self, xstep, ystep):
        w, h = self.width, self.height
        if xstep < 0:
            sx, xend, dx = 0, w + xstep, 1
            if xend <= 0:
                return
        else:
            sx, xend, dx = w - 1, xstep - 1, -1
            if xend >= sx:
                return
        if ystep < 0:
            y, yend, dy = 0, h + ystep, 1
            if yend <= 0:
                return
        else:
            y, yend, dy = h - 1, ystep - 1, -1
            if yend >= y:
                return
        while y != yend:
            x = sx
            while x != xend:
                self._set(x, y, self._get(x - xstep, y - ystep))
                x += dx
            y += dy


def FrameBuffer1(buffer, width, height, stride=None):
    """Legacy constructor (MONO_VLSB), as MicroPython's ``framebuf.FrameBuffer1``."""
    return FrameBuffer(buffer, width, height, MONO_VLSB, stride)
