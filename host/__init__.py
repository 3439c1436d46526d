"""nabd host tools (CPython): the technicians' CLI and the bridge to the MicroPython VM."""
