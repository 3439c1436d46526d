"""boot.py (copied to the ESP32's root): kept minimal so that a broken application can still be
reached over the REPL. No network, no sensors here: ``main.py`` does everything, under the
watchdog."""
import gc

gc.collect()
