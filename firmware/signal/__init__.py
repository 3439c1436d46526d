"""On-device signal processing (streaming, fixed-point on the per-sample path).

Import by package path (``firmware.signal.x``): a bare ``signal`` is CPython's standard module.
"""
