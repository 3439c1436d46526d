"""Screens of the device on the 128x64 SSD1306, drawn with ``framebuf`` (8x8 font: 16 characters
by 8 lines; ``big_text`` doubles it to 8 characters by 16 pixels).

    ui = UI(oled)                   # oled: firmware.drivers.ssd1306.SSD1306 (None: no display)
    ui.idle("online", queued=2, patient="p-7Hq2xK")
    ui.aim(progress=40)             # "aim at forehead", progress 0..100 %
    ui.finger(seconds_left=28)      # "place finger"
    ui.measuring("SpO2 / pulse", 55, "settling")
    ui.result(r)                    # r: firmware.app.Result
    ui.info(lines, fw="0.1.0")      # [(label, value), ...]
    ui.error("MLX90614", "no answer (nack)")

Every screen is a full redraw then one ``show()`` (about 93 ms on the 100 kHz bus), so the app
calls them when something changes, not per sample. Layout positions are module constants so that
tests can find what was drawn (``ROW_*``, ``X_*``). Units: temperatures are hundredths of a degree
Celsius (int), SpO2 whole %, pulse whole /min, signal quality thousandths. A display error
(``SSD1306Error``) propagates: the app logs it and keeps measuring without a screen.
"""
from micropython import const

W = const(128)
H = const(64)
CHARS = const(16)          # 8x8 font: characters per line

# result screen
ROW_LABELS = const(0)      # "SpO2"   "Pulse"
ROW_BIG = const(9)         # big values (16 px tall)
X_PULSE = const(64)
ROW_TEMP = const(27)       # "T 36.9C   Q 91%"
ROW_ALERT = const(37)      # inverted bar with the alerts
ROW_PATIENT = const(47)
ROW_STATE = const(56)
# measuring screens
ROW_TITLE = const(0)
ROW_PROMPT = const(16)     # big prompt, two lines of 16 px
ROW_BAR = const(46)
BAR_H = const(7)
ROW_NOTE = const(56)

ALERT_TEXT = {"fever": "FEVER", "hypothermia": "LOW TEMP", "low_spo2": "SpO2<90",
              "tachycardia": "PULSE>120", "bradycardia": "PULSE<50"}


def temp_text(cc):
    """``36.9`` from hundredths of a degree (rounded to a tenth); ``--.-`` for None."""
    if cc is None:
        return "--.-"
    t = (cc + 5) // 10 if cc >= 0 else -((-cc + 5) // 10)
    sign = "-" if t < 0 else ""
    t = -t if t < 0 else t
    return sign + str(t // 10) + "." + str(t % 10)


def wrap(text, width=CHARS, lines=4):
    """Split ``text`` on spaces into at most ``lines`` lines of ``width`` characters (a word longer
    than a line is cut)."""
    out = []
    cur = ""
    for word in text.split(" "):
        while len(word) > width:
            if cur:
                out.append(cur)
                cur = ""
            out.append(word[:width])
            word = word[width:]
        if not cur:
            cur = word
        elif len(cur) + 1 + len(word) <= width:
            cur = cur + " " + word
        else:
            out.append(cur)
            cur = word
    if cur:
        out.append(cur)
    return out[:lines]


class UI:
    def __init__(self, oled):
        self.d = oled
        self.screen = None        # name of the last screen drawn ("idle", "aim", ...)
        self.draws = 0

    # --- pieces ---
    def _begin(self, name):
        self.screen = name
        d = self.d
        if d is not None:
            d.fill(0)
        return d

    def _end(self):
        self.draws += 1
        if self.d is not None:
            self.d.show()

    def _title(self, text, right=""):
        d = self.d
        d.fill_rect(0, ROW_TITLE, W, 9, 1)
        d.text(text[:CHARS], 1, ROW_TITLE + 1, 0)
        if right:
            d.text(right, W - 8 * len(right) - 1, ROW_TITLE + 1, 0)

    def _center(self, text, y, big=False):
        d = self.d
        if big:
            x = (W - 16 * len(text)) // 2
            d.big_text(text, x if x > 0 else 0, y, 2)
        else:
            x = (W - 8 * len(text)) // 2
            d.text(text, x if x > 0 else 0, y, 1)

    def _bar(self, pct):
        d = self.d
        pct = 0 if pct < 0 else (100 if pct > 100 else pct)
        d.rect(0, ROW_BAR, W, BAR_H, 1)
        d.fill_rect(2, ROW_BAR + 2, (W - 4) * pct // 100, BAR_H - 4, 1)

    # --- screens ---
    def idle(self, net, queued=0, patient=None, note=None):
        """Ready: network state, readings waiting, patient code, "press to measure"."""
        d = self._begin("idle")
        if d is None:
            return self._end()
        self._title("nabd", net[:8])
        self._center("Press", 14, True)
        self._center("to measure", 32)
        if patient:
            d.text(("Pt " + patient)[:CHARS], 0, ROW_PATIENT, 1)
        if note:
            d.text(note[:CHARS], 0, ROW_STATE, 1)
        elif queued:
            d.text(("%d waiting" % queued)[:CHARS], 0, ROW_STATE, 1)
        self._end()

    def aim(self, progress):
        """Temperature: "Aim at forehead" with a progress bar (0..100 %)."""
        d = self._begin("aim")
        if d is None:
            return self._end()
        self._title("Temperature")
        self._center("Aim at", ROW_PROMPT, True)
        self._center("forehead", ROW_PROMPT + 18)
        self._bar(progress)
        self._end()

    def finger(self, seconds_left, temp_cc=None):
        """SpO2/pulse: "Place finger" with the seconds left before giving up."""
        d = self._begin("finger")
        if d is None:
            return self._end()
        self._title("SpO2 / pulse", temp_text(temp_cc) + "C" if temp_cc is not None else "")
        self._center("Place", ROW_PROMPT, True)
        self._center("finger on sensor", ROW_PROMPT + 18)
        self._center("%d s left" % seconds_left, ROW_NOTE - 1)
        self._end()

    def measuring(self, title, progress, note=""):
        """A measurement under way: title, "Hold still", progress bar, and a note (why it is not
        done yet: "settling", "motion"...)."""
        d = self._begin("measuring")
        if d is None:
            return self._end()
        self._title(title)
        self._center("Hold", ROW_PROMPT, True)
        self._center("still", ROW_PROMPT + 18)
        self._bar(progress)
        if note:
            self._center(note[:CHARS], ROW_NOTE)
        self._end()

    def result(self, r):
        """The result: SpO2 and pulse large, temperature and quality, alerts (inverted bar),
        patient code, and the reading's delivery state ("queued", "sent", "stored")."""
        d = self._begin("result")
        if d is None:
            return self._end()
        d.text("SpO2", 0, ROW_LABELS, 1)
        d.text("Pulse", X_PULSE, ROW_LABELS, 1)
        d.big_text(spo2_text(r.spo2), 0, ROW_BIG, 2)
        d.big_text(pulse_text(r.hr), X_PULSE, ROW_BIG, 2)
        d.text(temp_line(r), 0, ROW_TEMP, 1)
        al = alert_line(r.alerts)
        if al:
            d.fill_rect(0, ROW_ALERT - 1, W, 9, 1)
            d.text(al, 0, ROW_ALERT, 0)
        elif r.reason:
            d.text(r.reason[:CHARS], 0, ROW_ALERT, 1)
        if r.patient:
            d.text(("Pt " + r.patient)[:CHARS], 0, ROW_PATIENT, 1)
        d.text(state_line(r), 0, ROW_STATE, 1)
        self._end()

    def info(self, lines, fw=""):
        """Device information: the firmware version in the title bar, then ``lines``, a list of
        (label, value) shown as ``label value`` (a long value continues on the next line)."""
        d = self._begin("info")
        if d is None:
            return self._end()
        self._title("Info", ("fw " + fw) if fw else "")
        y = 10
        for label, value in lines:
            text = label + " " + str(value) if label else str(value)
            while text and y <= H - 8:
                d.text(text[:CHARS], 0, y, 1)
                text = text[CHARS:]
                y += 9 if y < H - 17 else 8
            if y > H - 8:
                break
        self._end()

    def error(self, source, message, hint="press: retry"):
        """An error: what failed, why, and what the button does now."""
        d = self._begin("error")
        if d is None:
            return self._end()
        self._title("Error", source[:7])
        y = 12
        for line in wrap(message, CHARS, 4):
            d.text(line, 0, y, 1)
            y += 9
        if hint:
            d.text(hint[:CHARS], 0, ROW_STATE, 1)
        self._end()

    def off(self):
        """Blank the screen (idle power save)."""
        self._begin("off")
        self._end()


def spo2_text(spo2):
    return "--" if spo2 is None else str(spo2) + "%"


def pulse_text(hr):
    return "--" if hr is None else str(hr)


def temp_line(r):
    """``T 36.9C  Q 91%``: temperature and the worst signal quality (percent)."""
    q = r.quality()
    if r.temp_cc is None and r.temp_flag in ("LO", "HI"):
        s = "T " + r.temp_flag
    else:
        s = "T " + temp_text(r.temp_cc) + "C"
    if q is not None:
        s = s + "  Q " + str((q + 5) // 10) + "%"
    return s[:CHARS]


def alert_line(alerts):
    """Alerts in screen words, cut to one line ("" when none)."""
    s = ""
    for a in alerts:
        w = ALERT_TEXT.get(a, a.upper())
        if len(s) + len(w) + (1 if s else 0) > CHARS:
            break
        s = s + " " + w if s else w
    return s


def state_line(r):
    """``#12 stored`` / ``#12 queued`` / ``#12 sent``, or ``not saved`` when no seq."""
    if r.seq is None:
        return "not saved" if r.state is None else r.state[:CHARS]
    return ("#%d %s" % (r.seq, r.state or ""))[:CHARS]
