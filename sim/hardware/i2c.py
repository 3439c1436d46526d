"""A virtual I2C bus with the ``machine.I2C`` methods, for register-level sensor models.

A device model attached at a 7-bit address implements two methods that mirror the wire:

``i2c_write(data, stop)``  the bytes sent after SA+W (bytes-like, valid only during the call);
                           ``stop`` is False when a repeated start follows (a combined read).
``i2c_read(buf)``          fill ``buf`` with the bytes the device sends after SA+R.

Either may raise ``OSError`` to model a NACK (``ENODEV``), a bus error (``EIO``) or a held bus
(``ETIMEDOUT``). The bus charges each transfer's time to the virtual clock at the bus frequency
(9 clock cycles a byte), so a driver that reads slowly really falls behind a sensor's FIFO.
"""
from micropython import const
import errno

_ENODEV = const(19)


class VirtualI2C:
    def __init__(self, clock=None, freq=100000):
        self.clock = clock
        self.freq = freq
        # ns per byte (9 clocks), computed once: the per-transfer product must stay a small int
        self._ns_per_byte = (9 * 1000000000) // freq
        self.devices = {}
        self.transactions = 0
        self._addr1 = bytearray(1)
        self._addr2 = bytearray(2)
        # views made once: memoryview() allocates on MicroPython, and a driver's read path
        # measured for zero allocation goes through readfrom_mem_into
        self._mv1 = memoryview(self._addr1)
        self._mv2 = memoryview(self._addr2)

    def attach(self, addr, device):
        self.devices[addr] = device
        return device

    def detach(self, addr):
        self.devices.pop(addr, None)

    def _dev(self, addr):
        dev = self.devices.get(addr)
        if dev is None:
            raise OSError(_ENODEV)
        return dev

    def _charge(self, nbytes):
        self.transactions += 1
        if self.clock is not None:
            # start + address byte + data bytes, 9 clocks each
            self.clock.advance_us(((nbytes + 1) * self._ns_per_byte) // 1000)

    # --- machine.I2C API ---
    def scan(self):
        return sorted(a for a, d in self.devices.items() if getattr(d, "present", True))

    def writeto(self, addr, buf, stop=True):
        dev = self._dev(addr)
        self._charge(len(buf))
        dev.i2c_write(buf, stop)
        return len(buf)

    def readfrom_into(self, addr, buf, stop=True):
        dev = self._dev(addr)
        self._charge(len(buf))
        dev.i2c_read(buf)

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self.readfrom_into(addr, buf, stop)
        return bytes(buf)

    def writevto(self, addr, vector, stop=True):
        data = bytearray()
        for b in vector:
            data.extend(b)
        return self.writeto(addr, data, stop)

    def _memaddr(self, memaddr, addrsize):
        if addrsize == 16:
            m = self._addr2
            m[0] = (memaddr >> 8) & 0xFF
            m[1] = memaddr & 0xFF
        else:
            m = self._addr1
            m[0] = memaddr & 0xFF
        return m

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        dev = self._dev(addr)
        m = self._memaddr(memaddr, addrsize)
        self._charge(len(m))
        dev.i2c_write(self._mv2 if addrsize == 16 else self._mv1, False)   # repeated start follows
        self._charge(len(buf))
        dev.i2c_read(buf)

    def readfrom_mem(self, addr, memaddr, nbytes, addrsize=8):
        buf = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, buf, addrsize=addrsize)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        dev = self._dev(addr)
        m = self._memaddr(memaddr, addrsize)
        data = bytearray(len(m) + len(buf))
        data[: len(m)] = m
        data[len(m):] = buf
        self._charge(len(data))
        dev.i2c_write(data, True)


def errno_name(e):
    """Name of an OSError's errno for messages (``ENODEV``, ``EIO``...)."""
    code = e.args[0] if e.args else None
    return errno.errorcode.get(code, str(code))
