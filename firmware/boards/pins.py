"""Pin map of the nabd reference board (ESP32-DevKitC, ESP32-WROOM-32E), as data.

Shared by the ESP32 board (``firmware.boards.esp32``) and the simulated board
(``sim.hardware.board``), so that both name the same pins. Plain int constants: MicroPython and
CPython. The reasons for each choice are in ``hardware/README.md``; deploy this file with the
firmware (``/lib/firmware/boards/pins.py`` or ``/firmware/boards/pins.py`` on the board's flash).
"""

# I2C bus 0, shared by the MLX90614 (0x5A), the MAX30102 (0x57), the SSD1306 OLED (0x3C) and the
# optional LIS3DH accelerometer (0x18, SA0 to GND)
I2C_ID = 0
SDA = 21
SCL = 22
I2C_FREQ = 100000     # the MLX90614's SMBus allows at most 100 kHz

# the MAX30102's INT: open drain, active low, internal pull-up enabled
MAX_INT = 19
# the one button: to GND, internal pull-up, active low (not GPIO 0, the boot strap)
BUTTON = 27
# passive piezo buzzer through an NPN transistor, driven by LEDC PWM
BUZZER = 25

# 7-bit I2C addresses
ADDR_MLX90614 = 0x5A
ADDR_MAX30102 = 0x57
ADDR_SSD1306 = 0x3C
ADDR_LIS3DH = 0x18      # optional motion reference (0x19 when its SA0 is tied high)

PINS = {
    "SDA": SDA, "SCL": SCL, "MAX_INT": MAX_INT, "BUTTON": BUTTON, "BUZZER": BUZZER,
}
