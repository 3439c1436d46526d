"""Simulated hardware: a virtual I2C bus, register-level sensor models, a virtual clock and board.

Everything here except the physiology synthesiser (numpy) runs on MicroPython as well as CPython,
so the firmware under test and its simulated sensors share one interpreter in the VM. Models keep
their steady-state paths allocation-free so that allocation measured around a driver call is the
driver's own.
"""
