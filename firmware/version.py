"""Firmware version, reported in every reading (`fw`) and status message."""
VERSION = "0.1.0"
