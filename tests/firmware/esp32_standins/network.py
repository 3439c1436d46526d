"""Stand-in for the ESP32 port's ``network``: a WLAN that joins only the SSID "clinic"."""

STA_IF = 0


class WLAN:
    def __init__(self, i):
        self.up = False
        self.conn = False
        self.ssid = None

    def active(self, v=None):
        if v is not None:
            self.up = bool(v)
        return self.up

    def connect(self, ssid, psk):
        self.ssid = ssid
        self.conn = ssid == "clinic"

    def isconnected(self):
        return self.conn

    def disconnect(self):
        self.conn = False

    def status(self, p=None):
        return -61
