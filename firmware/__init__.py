"""nabd firmware: runs unchanged on MicroPython (ESP32, and the WebAssembly VM in tests) and CPython."""
