"""A bounded log file on flash: ``log.txt`` under ``board.storage_root``, rotated to ``log.1.txt``
when it passes ``max_bytes`` (so at most about twice that on flash).

    log = Log(board, max_bytes=16384)
    log.redact(key_hex, mqtt_password)   # these strings are replaced by *** wherever they appear
    log.info("uplink", "connected to broker")
    log.warn("uplink", "forged ack ignored: bad_signature")
    log.lines()                           # the current file's lines (for tests and the CLI)

Each line is ``<uptime ms> <LEVEL> <source>: <message>``. Secrets never reach the file: callers
must not pass them, and the registered secrets are redacted as a second line of defence. Writing
the log never raises (a full flash must not stop the device); ``failures`` counts lost lines.
"""
import os


class Log:
    def __init__(self, board, name="log.txt", max_bytes=16384):
        root = board.storage_root
        self.path = root + "/" + name
        self.old = root + "/" + name.replace(".txt", "") + ".1.txt"
        self.max_bytes = max_bytes
        self.clock = board.clock
        self._secrets = []
        self.failures = 0
        self.count = 0
        try:
            self._size = os.stat(self.path)[6]
        except OSError:
            self._size = 0

    def redact(self, *secrets):
        """Register strings that must never appear in the log (keys, passwords)."""
        for s in secrets:
            if s and s not in self._secrets:
                self._secrets.append(s)

    def write(self, level, source, msg):
        msg = str(msg)
        for s in self._secrets:
            if s in msg:
                msg = msg.replace(s, "***")
        line = "%d %s %s: %s\n" % (self.clock.ticks_ms(), level, source, msg.replace("\n", " "))
        try:
            if self._size + len(line) > self.max_bytes and self._size:
                try:
                    os.remove(self.old)
                except OSError:
                    pass
                os.rename(self.path, self.old)
                self._size = 0
            with open(self.path, "a") as f:
                f.write(line)
            self._size += len(line)
            self.count += 1
        except OSError:
            self.failures += 1

    def info(self, source, msg):
        self.write("INFO", source, msg)

    def warn(self, source, msg):
        self.write("WARN", source, msg)

    def error(self, source, msg):
        self.write("ERROR", source, msg)

    def lines(self):
        try:
            with open(self.path) as f:
                return f.read().splitlines()
        except OSError:
            return []
