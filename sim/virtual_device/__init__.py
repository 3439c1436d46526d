"""The virtual device: an ESP32 running nabd behind a pseudo-terminal (see ``serial_bridge``)."""
