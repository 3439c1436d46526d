"""What the simulated OLED shows, as a PNG or as text (host side, CPython, no PIL).

Input is a frame in the SSD1306's GDDRAM layout (MONO_VLSB: ``width`` bytes per page of 8 rows,
LSB on top), as ``sim.hardware.ssd1306.SSD1306Model.frame()`` returns it (inside the VM, fetch it
with ``vm.eval("model.frame().hex()")``), or a model object directly under CPython.

The PNG looks like the device: a dark bezel around the panel, a near-black background, light
pixels (scale >= 4, a one-pixel gap between dots so that text stays crisp when zoomed).
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

WIDTH, HEIGHT = 128, 64
BEZEL = (38, 40, 44)
BACKGROUND = (8, 10, 14)
LIT = (150, 225, 255)  # the usual white/blue OLED tint
GAP = (18, 26, 32)     # between dots of a lit pixel area


def _frame_bytes(frame) -> bytes:
    if hasattr(frame, "frame"):  # a model object (CPython)
        frame = frame.frame()
    if isinstance(frame, str):
        frame = bytes.fromhex(frame)
    return bytes(frame)


def frame_to_rows(frame, width: int = WIDTH, height: int = HEIGHT) -> list[list[int]]:
    """``height`` rows of ``width`` 0/1 values from a MONO_VLSB frame."""
    data = _frame_bytes(frame)
    if len(data) < width * ((height + 7) // 8):
        raise ValueError(f"frame has {len(data)} bytes, {width}x{height} needs {width * ((height + 7) // 8)}")
    return [[(data[(y >> 3) * width + x] >> (y & 7)) & 1 for x in range(width)] for y in range(height)]


def ascii_art(frame, width: int = WIDTH, height: int = HEIGHT, border: bool = True) -> str:
    """The screen as text, two pixel rows per line with half blocks (▀ ▄ █), framed."""
    rows = frame_to_rows(frame, width, height)
    if height % 2:
        rows.append([0] * width)
    chars = {(0, 0): " ", (1, 0): "▀", (0, 1): "▄", (1, 1): "█"}
    lines = ["".join(chars[(top[x], bot[x])] for x in range(width)) for top, bot in zip(rows[::2], rows[1::2], strict=True)]
    if border:
        lines = ["┌" + "─" * width + "┐"] + ["│" + line + "│" for line in lines] + ["└" + "─" * width + "┘"]
    return "\n".join(lines)


def render_rgb(frame, scale: int = 4, margin: int | None = None, width: int = WIDTH,
               height: int = HEIGHT, contrast: int = 255) -> tuple[int, int, list[bytes]]:
    """RGB rows of the screenshot: (image width, image height, rows of packed RGB bytes)."""
    if scale < 1:
        raise ValueError("scale must be >= 1")
    rows = frame_to_rows(frame, width, height)
    margin = 4 * scale if margin is None else margin
    level = 0.45 + 0.55 * max(0, min(255, contrast)) / 255
    lit = bytes(int(c * level) for c in LIT)
    gap = bytes(GAP) if scale >= 4 else lit
    bg = bytes(BACKGROUND)
    bezel = bytes(BEZEL)
    img_w = width * scale + 2 * margin
    img_h = height * scale + 2 * margin
    out: list[bytes] = [bezel * img_w] * margin
    for y in range(height):
        src = rows[y]
        for sy in range(scale):
            last_row = scale >= 4 and sy == scale - 1
            parts = [bezel * margin]
            for x in range(width):
                if src[x]:
                    if last_row:
                        parts.append(gap * scale)
                    else:
                        parts.append(lit * (scale - 1) + (gap if scale >= 4 else lit))
                else:
                    parts.append(bg * scale)
            parts.append(bezel * margin)
            out.append(b"".join(parts))
    out += [bezel * img_w] * margin
    return img_w, img_h, out


def write_png(path, width: int, height: int, rgb_rows: list[bytes]) -> Path:
    """Write 8-bit RGB rows as a PNG (filter 0 per row, zlib), standard library only."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + r for r in rgb_rows)
    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9))
           + chunk(b"IEND", b""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def to_png(frame, path, scale: int = 4, contrast: int = 255) -> Path:
    """Save the screen (a frame or a model) as a readable PNG: ``scale`` >= 4 recommended."""
    w, h, rows = render_rgb(frame, scale=scale, contrast=contrast)
    return write_png(path, w, h, rows)


def read_png(path) -> tuple[int, int, list[bytes]]:
    """Decode a PNG written by ``write_png`` (8-bit RGB, filter 0): for tests."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if zlib.crc32(kind + body) & 0xFFFFFFFF != struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]:
            raise ValueError(f"bad CRC in {kind!r}")
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            if (depth, ctype) != (8, 2):
                raise ValueError("only 8-bit RGB PNGs")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = 1 + 3 * w
    rows = []
    for y in range(h):
        if raw[y * stride] != 0:
            raise ValueError("only filter type 0")
        rows.append(raw[y * stride + 1:(y + 1) * stride])
    return w, h, rows
