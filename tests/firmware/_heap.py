"""In-VM helper: the no-allocation proof the driver and app tests share. Import it in the VM
(``from tests.firmware._heap import locked``)."""
import gc

import micropython


def locked(f):
    """Call ``f()`` (no arguments: a call with arguments could allocate them) under
    ``micropython.heap_lock()``. Returns [what it returned, "ok" or "allocated" (a MemoryError),
    bytes allocated meanwhile (gc.mem_alloc)]."""
    out = None
    state = None
    gc.collect()
    a0 = gc.mem_alloc()
    micropython.heap_lock()
    try:
        out = f()
        state = "ok"
    except MemoryError:
        state = "allocated"
    micropython.heap_unlock()
    return [out, state, gc.mem_alloc() - a0]
