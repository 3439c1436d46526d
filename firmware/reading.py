"""Payloads of the wire protocol (``docs/protocol.md``) as compact, deterministic JSON bytes.

MicroPython's dicts do not keep insertion order and its floats are heap objects, so payloads are
serialised here: keys in the protocol's order (then the rest sorted), no spaces, and measured
values given as fixed-point integers (``Fixed(369, 1)`` -> ``36.9``) so no float is formatted.

    obs, flags = reading.observations(temp_mc=36870, spo2=97, hr=72, pi_cp=240, q_temp=970, q_ppg=910)
    p = reading.build_reading(ts, ts_ok, up_s, fw, cal, patient, obs, flags)   # a dict without seq
    uplink.submit(p)            # the uplink adds v, dev, seq, serialises with dumps() and signs

Units of the integer inputs: temperature in milli-degrees Celsius (``temp_mc``), SpO2 in whole %,
pulse in whole /min, perfusion index in hundredths of a percent (``pi_cp``: 240 = 2.40 %), signal
quality in thousandths (``q_*``: 910 = 0.91). Values outside the protocol's ranges are left out
(the device never sends them); ``alerts()`` gives the protocol's flag words.
"""
from micropython import const

from firmware.limits import BRADY, FEVER_CC, HYPOTHERMIA_CC, LOW_SPO2, TACHY

# ranges the gateway accepts (docs/protocol.md), in the integer units above
TEMP_MIN_MC = const(25000)
TEMP_MAX_MC = const(45000)
SPO2_MIN = const(50)
SPO2_MAX = const(100)
HR_MIN = const(25)
HR_MAX = const(250)
PI_MIN_CP = const(2)
PI_MAX_CP = const(2000)

_ORDER = ("v", "dev", "state", "conn", "seq", "n", "exp", "cmd", "ts", "ts_ok", "up", "fw", "cal", "patient",
          "code", "value", "unit", "q",
          "site", "obs", "flags", "id", "date")


class Fixed:
    """An exact decimal ``value / 10**decimals`` written without a float (``Fixed(-5, 2)`` ->
    ``-0.05``)."""

    def __init__(self, value, decimals):
        self.value = value
        self.decimals = decimals

    def text(self):
        v = self.value
        if not self.decimals:
            return str(v)
        sign = "-" if v < 0 else ""
        v = -v if v < 0 else v
        p = 10 ** self.decimals
        frac = str(v % p)
        return sign + str(v // p) + "." + "0" * (self.decimals - len(frac)) + frac


def _str(s, out):
    out.append(34)
    for ch in s:
        c = ord(ch)
        if ch == '"' or ch == "\\":
            out.append(92)
            out.append(c)
        elif c < 32:
            out.extend(("\\u%04x" % c).encode())
        else:
            out.extend(ch.encode())
    out.append(34)


def _keys(d):
    first = [k for k in _ORDER if k in d]
    rest = sorted(k for k in d if k not in _ORDER)
    return first + rest


def _enc(o, out):
    if o is None:
        out.extend(b"null")
    elif o is True:
        out.extend(b"true")
    elif o is False:
        out.extend(b"false")
    elif isinstance(o, int):
        out.extend(str(o).encode())
    elif isinstance(o, Fixed):
        out.extend(o.text().encode())
    elif isinstance(o, float):
        if o != o or o in (float("inf"), float("-inf")):
            raise ValueError("NaN/inf cannot be sent")
        out.extend(repr(o).encode())
    elif isinstance(o, str):
        _str(o, out)
    elif isinstance(o, (list, tuple)):
        out.append(91)
        for i in range(len(o)):
            if i:
                out.append(44)
            _enc(o[i], out)
        out.append(93)
    elif isinstance(o, dict):
        out.append(123)
        first = True
        for k in _keys(o):
            if not isinstance(k, str):
                raise ValueError("JSON object keys must be strings")
            if not first:
                out.append(44)
            first = False
            _str(k, out)
            out.append(58)
            _enc(o[k], out)
        out.append(125)
    else:
        raise ValueError("cannot encode " + str(type(o)) + " as JSON")


def dumps(obj):
    """Compact deterministic JSON (bytes) of dict/list/str/int/bool/None/Fixed."""
    out = bytearray()
    _enc(obj, out)
    return bytes(out)


def alerts(temp_mc=None, spo2=None, hr=None):
    """Protocol flag words for the measured values (None = not measured), at the limits of
    firmware/limits.py."""
    f = []
    if temp_mc is not None:
        if temp_mc >= FEVER_CC * 10:
            f.append("fever")
        elif temp_mc < HYPOTHERMIA_CC * 10:
            f.append("hypothermia")
    if spo2 is not None and spo2 < LOW_SPO2:
        f.append("low_spo2")
    if hr is not None:
        if hr > TACHY:
            f.append("tachycardia")
        elif hr < BRADY:
            f.append("bradycardia")
    return f


def _q(q):
    if q is None:
        return Fixed(0, 0)
    q = 0 if q < 0 else (1000 if q > 1000 else q)
    return Fixed((q + 5) // 10, 2)


def observations(temp_mc=None, spo2=None, hr=None, pi_cp=None, q_temp=None, q_ppg=None,
                 temp_site="forehead"):
    """(obs list, flags list) from integer measurements; out-of-range values are left out."""
    obs = []
    if temp_mc is not None and TEMP_MIN_MC <= temp_mc <= TEMP_MAX_MC:
        o = {"code": "temp", "value": Fixed((temp_mc + 50) // 100, 1), "unit": "Cel", "q": _q(q_temp)}
        if temp_site:
            o["site"] = temp_site
        obs.append(o)
    else:
        temp_mc = None
    if spo2 is not None and SPO2_MIN <= spo2 <= SPO2_MAX:
        obs.append({"code": "spo2", "value": spo2, "unit": "%", "q": _q(q_ppg)})
    else:
        spo2 = None
    if hr is not None and HR_MIN <= hr <= HR_MAX:
        obs.append({"code": "hr", "value": hr, "unit": "/min", "q": _q(q_ppg)})
    else:
        hr = None
    if pi_cp is not None and PI_MIN_CP <= pi_cp <= PI_MAX_CP:
        obs.append({"code": "pi", "value": Fixed(pi_cp, 2), "unit": "%", "q": _q(q_ppg)})
    return obs, alerts(temp_mc, spo2, hr)


def build_reading(ts, ts_ok, up, fw, cal, patient, obs, flags, site=None):
    """The reading payload (dict without ``v``/``dev``/``seq``, which the uplink adds).

    ``cal``: None or a dict with ``id`` and ``date``; ``patient``: token or None; ``site``
    defaults from the observations (``forehead``, ``finger`` or ``forehead+finger``).
    Raises ValueError when no observation is in range."""
    if not obs or len(obs) > 4:
        raise ValueError("a reading needs 1..4 observations in range")
    if site is None:
        t = any(o["code"] == "temp" for o in obs)
        f = any(o["code"] != "temp" for o in obs)
        site = "forehead+finger" if t and f else ("forehead" if t else "finger")
    p = {"ts": ts, "ts_ok": bool(ts_ok), "up": up, "fw": fw,
         "cal": {"id": cal["id"], "date": cal["date"]} if cal else None,
         "site": site, "obs": obs, "flags": list(flags)}
    if patient:
        p["patient"] = patient
    return p
