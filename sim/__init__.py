"""Stand-ins for the hardware and the people, so the whole system runs and is tested without a board.

- ``sim.hardware``: the simulated board: a virtual I2C bus and clock, register-level models of the
  MLX90614, MAX30102 and SSD1306, named faults, scenarios, an in-memory broker loopback. Runs on
  MicroPython (copied into the VM beside ``firmware/``) and on CPython.
- ``sim.physiology``: the seeded physiology synthesiser with ground truth (CPython and numpy only).
- ``sim.virtual_device``: an ESP32 running nabd behind a serial port: ``serial_bridge`` (CPython,
  the pty), ``repl.mjs`` (Node.js, the MicroPython REPL), ``vm_boot`` (MicroPython, the boot step).

Nothing here is imported by ``firmware/``.
"""
