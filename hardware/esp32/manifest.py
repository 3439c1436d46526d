# ruff: noqa: F821  (include/package/require are provided by MicroPython's manifest tooling)
"""Frozen-module manifest for nabd's ESP32 firmware image.

Why frozen: compiled from source (or loaded as .mpy files) the firmware's bytecode lives in RAM,
about 158 KB (bench/device.py `heap_code_bytes`), more than the ~100 KB an ESP32 without PSRAM
has free. Frozen into the image, bytecode and constant strings stay in flash and are executed
in place, leaving the heap to buffers and readings (`heap_peak_bytes` ≈ 33 KB per cycle).

Build (from a MicroPython checkout with ESP-IDF set up, v1.22 or later):

    cd ports/esp32
    make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/nabd/hardware/esp32/manifest.py

Paths below are relative to this file.
"""
include("$(PORT_DIR)/boards/manifest.py")

# the whole firmware package (drivers, signal chain, app, comms, boards and the pin map)
package("firmware", base_path="../..")
