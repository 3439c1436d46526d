"""In-VM helper of tests/sim/test_board.py: what a driver sees of each simulated fault on a
board ``b`` (a SimBoard)."""
from firmware.drivers.max30102 import MAX30102
from firmware.drivers.mlx90614 import MLX90614


def fault_of(f):
    """The named fault (or the errno) of what ``f()`` raised; None when it did not raise."""
    try:
        f()
        return None
    except Exception as e:
        return getattr(e, "fault", None) or (e.args[0] if e.args else None)


def mlx_object(b):
    return MLX90614(b.i2c, b.clock).object_cc()


def max_running(b):
    d = MAX30102(b.i2c, b.clock)
    d.reset()
    d.check()
    d.configure()
    d.read_fifo()
    return d


def swapped(b):
    return max_running(b).detect_swapped_leds()


def lost(b):
    """True when samples were lost reading the FIFO every 40 ms for 1 s."""
    d = max_running(b)
    n = 0
    for _ in range(25):
        b.clock.sleep_ms(40)
        d.read_fifo()
        n += d.lost
    return n > 0
