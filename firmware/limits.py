"""Clinical limits: the alert thresholds and the rated range of body temperature, in the device's
integer units (temperature in hundredths of a degree Celsius, SpO2 in %, pulse in /min). Every
firmware module takes them from here (the alert flags are docs/protocol.md's).
"""
from micropython import const

FEVER_CC = const(3800)        # "fever" at or above 38.00 degC
HYPOTHERMIA_CC = const(3500)  # "hypothermia" below 35.00 degC
RATED_LO_CC = const(3400)     # rated display range of body temperature: outside it the value is
RATED_HI_CC = const(4250)     # not given as a body temperature (LO/HI instead)
LOW_SPO2 = const(90)          # "low_spo2" below 90 %
TACHY = const(120)            # "tachycardia" above 120 /min
BRADY = const(50)             # "bradycardia" below 50 /min
