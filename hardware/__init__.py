"""Reference hardware (docs) and its stand-ins (``hardware.sim``)."""
