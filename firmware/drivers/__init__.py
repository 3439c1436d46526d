"""Register-level drivers over any object with the machine.I2C methods."""
