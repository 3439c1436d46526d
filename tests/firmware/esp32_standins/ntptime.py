"""Stand-in for the ESP32 port's ``ntptime``: ``reachable = False`` makes ``settime`` time out."""

host = None
reachable = True


def settime():
    if not reachable:
        raise OSError(110)
