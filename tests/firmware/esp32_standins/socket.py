"""Stand-in for ``socket``: records each socket made (``last``); nothing is sent."""

AF_INET = 2
SOCK_STREAM = 1
last = []


def getaddrinfo(host, port, af=0, type=0):
    return [(AF_INET, SOCK_STREAM, 0, "", ("10.0.0.9", port))]


class socket:
    def __init__(self, af, t):
        self.timeout = None
        self.addr = None
        self.closed = False
        last.append(self)

    def settimeout(self, s):
        self.timeout = s

    def connect(self, a):
        self.addr = a

    def close(self):
        self.closed = True
