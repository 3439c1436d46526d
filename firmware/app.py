"""The measurement workflow: one button, two sensors, one screen, readings into the uplink.

A state machine that knows nothing about the hardware beyond the objects it is given:

    app = App(board, ui, mlx, max30102, pulseox, thermo, uplink, log, cfg)
    while True:
        app.step()          # one bounded slice: button, current state, uplink; never raises

States (``app.state``):

``idle``      sensors asleep (MLX90614 sleep command, MAX30102 shutdown); screen: network state,
              readings waiting, patient code. Short press: measure. Long press (>= 1.5 s): info.
``temp``      "aim at forehead": the MLX90614 is woken, then ``TEMP_READS`` object readings
              100 ms apart are averaged by the temperature chain (about a second in all).
``ppg``       "place finger": the MAX30102 is woken and its FIFO drained every step into the
              SpO2/pulse chain. While no finger is seen the prompt counts down; while the signal
              settles a progress bar shows the chain's reason ("settling", "motion"...). The
              result is taken when the chain has reported valid SpO2 and pulse for
              ``STABLE_S`` consecutive seconds; after ``PPG_TIMEOUT_MS`` (30 s) without it the
              result screen shows why ("no finger", "motion"...) and the temperature alone is
              recorded.
``result``    SpO2, pulse, temperature, signal quality, alerts (fever, low SpO2 < 90 %, pulse
              < 50 or > 120 /min), patient code, and the reading's delivery state (``queued``,
              ``sent``, ``stored`` = acknowledged by the gateway), redrawn when it changes.
``info``      device id, firmware, network state, readings waiting, calibration due date.
``error``     what failed and why; a short press goes back to idle and retries.

Errors never end the loop: any exception in a step is shown on the screen, logged to the bounded
log file (through ``uplink.note_error``, which also counts it in ``status.errors``) and the
sensor's state in ``uplink.sensors`` (reported in ``status``) says ``error: <fault>``.

Commands from the gateway (``command``): ``assign_patient`` and ``settings`` take effect at once
and are kept in ``config.json`` under ``settings`` (``patient``, ``report_pi``,
``temp_site_offset_c``), written only when a value changes, so they survive a restart; at boot
the stored values are checked as a command's would be and an invalid one is logged, counted and
ignored. A failed write (flash full) is logged and counted (source ``flash``); the command stays in
effect until the next restart.

Time is ``board.clock`` only (virtual in the simulator). The per-sample path (FIFO samples into
the chain) allocates nothing: the driver fills preallocated arrays and the chain works in
fixed-point.
"""
from micropython import const

from firmware import config, reading
from firmware.commands import SETTINGS, setting, valid_patient
from firmware.limits import RATED_HI_CC, RATED_LO_CC
from firmware.signal.pulseox import NO_FINGER
from firmware.version import VERSION

IDLE = "idle"
TEMP = "temp"
PPG = "ppg"
RESULT = "result"
INFO = "info"
ERROR = "error"

LONG_PRESS_MS = const(1500)
TEMP_READS = const(8)
TEMP_PERIOD_MS = const(100)
PPG_TIMEOUT_MS = const(30000)
STABLE_S = const(3)
RESULT_TIMEOUT_MS = const(120000)
INFO_TIMEOUT_MS = const(15000)
ERROR_TIMEOUT_MS = const(60000)
IDLE_STEP_MS = const(50)
PPG_STEP_MS = const(40)
_REDRAW_MS = const(1000)
_NTP_RETRY_MS = const(60000)
_SETTLE_REPORTS = const(6)   # reports with a finger before values are usually out (progress)

SHORT = 1
LONG = 2


class Result:
    """One measurement. Units: ``temp_cc`` hundredths of a degree C; ``spo2`` %; ``hr`` /min;
    ``pi_cp`` hundredths of a percent; ``q_temp``/``q_ppg`` thousandths; ``reason`` why SpO2/pulse
    are missing (None when measured); ``seq`` and ``state`` the reading in the uplink."""

    def __init__(self):
        self.temp_cc = None
        self.temp_flag = None     # "LO", "HI" or "no reading" when temp_cc is None
        self.spo2 = None
        self.hr = None
        self.pi_cp = None
        self.q_temp = None
        self.q_ppg = None
        self.alerts = []
        self.irregular = False    # pulse rate is the mean of an irregular rhythm (protocol flag)
        self.patient = None
        self.seq = None
        self.state = None
        self.reason = None

    def quality(self):
        """The lower of the two quality figures (thousandths), or None."""
        q = None
        for v in (self.q_temp, self.q_ppg):
            if v is not None and (q is None or v < q):
                q = v
        return q

    def to_dict(self):
        return {"temp_cc": self.temp_cc, "spo2": self.spo2, "hr": self.hr, "pi_cp": self.pi_cp,
                "q_temp": self.q_temp, "q_ppg": self.q_ppg, "alerts": self.alerts,
                "patient": self.patient, "seq": self.seq, "state": self.state, "reason": self.reason}


def _source(e):
    """Which part an exception is about: its ``source`` (drivers' errors, flash errors; see
    firmware/errors.py), else the app."""
    return getattr(e, "source", None) or "app"


def _same(a, b):
    """Equal and of the same type (``True == 1`` must not hide a change to store)."""
    return type(a) is type(b) and a == b


def _describe(e):
    f = getattr(e, "fault", None)
    msg = str(e) or type(e).__name__
    if f and f not in msg:
        msg = msg + " (" + f + ")"
    return msg


class App:
    """See the module docstring. ``mlx``, ``max30102``: the drivers; ``pulseox``: the SpO2/pulse
    chain; ``thermo``: the temperature chain; ``uplink``: ``firmware.uplink.Uplink``; ``cfg``:
    ``firmware.config.Config`` (calibration, device id)."""

    def __init__(self, board, ui, mlx, max30102, pulseox, thermo, uplink, log, cfg, fw=VERSION):
        self.board = board
        self.clock = board.clock
        self.ui = ui
        self.mlx = mlx
        self.max = max30102
        self.ppg = pulseox
        # the optional accelerometer, used only when the chain has a motion reference to feed
        acc = getattr(board, "accel", None)
        self.accel = acc if acc is not None and getattr(pulseox, "motion", None) is not None else None
        self._acc_on = False
        self.thermo = thermo
        self.uplink = uplink
        self.log = log
        self.cfg = cfg
        self.fw = fw
        self.patient = None
        self.state = None
        self.result = Result()     # the last measurement (empty before the first)
        self.readings = 0          # readings submitted since boot
        self.measurements = 0      # measurements finished (submitted or not)
        self.errors = 0
        self.last_error = None
        self.identify_until = None
        self._t_state = self.clock.ticks_ms()
        self._t_draw = self._t_state
        self._drawn = None
        self._btn = 0
        self._t_down = 0
        self._long_fired = False
        self._mlx_awake = True     # after power-on both sensors run until told otherwise
        self._max_awake = True
        self._max_ready = False
        self._t_read = 0
        self._n_temp = 0
        self._t_finger = 0
        self._good = 0
        self._reports = 0
        self._finger_reports = 0
        self._reason = ""
        self.report_pi = True
        self.temp_site_offset_cc = None
        self._info_from = IDLE
        self._t_ntp = None
        self._restore(cfg.settings if cfg is not None else None)
        try:
            self._enter(IDLE)
        except Exception as e:  # noqa: BLE001 - a sensor that fails at boot is shown, not fatal
            self.fail(e)

    # --- uplink commands (Uplink on_command) ---
    def command(self, cmd, args):
        """Apply a command whose arguments ``firmware.commands.check`` passed (the uplink checks
        them): ``assign_patient`` {"patient": token|None}: shown on the screen and put in the next
        readings; ``identify`` {"seconds": n}: beeps; ``settings``: all applied. Patient and
        settings are kept in ``config.json`` (see the module docstring)."""
        if cmd == "assign_patient":
            self.patient = args.get("patient")
            self.log.info("app", "patient " + ("assigned" if self.patient else "cleared"))
            self._drawn = None
            self._store({"patient": self.patient})
        elif cmd == "identify":
            self.identify_until = self.clock.ticks_add(self.clock.ticks_ms(), 1000 * args["seconds"])
        elif cmd == "settings":
            for k in args:
                self._set(k, args[k])
            self.log.info("app", "settings applied: " + ",".join(sorted(args)))
            self._store(args)
        else:
            raise ValueError("unknown command " + str(cmd))

    def _set(self, k, v):
        """Put a checked setting in effect."""
        if k == "report_pi":
            self.report_pi = v
        else:
            self.temp_site_offset_cc = int(v * 100 + (0.5 if v >= 0 else -0.5))

    def _restore(self, stored):
        """Apply the patient and settings kept in ``config.json``; an invalid value is logged,
        counted and ignored (the default stays), never fatal."""
        if not isinstance(stored, dict):
            return
        p = stored.get("patient")
        if p is not None:
            if valid_patient(p):
                self.patient = p
            else:  # the token is not logged: it may be anything
                self._note("config", "stored patient ignored: not a valid patient token")
        for k in SETTINGS:
            if k in stored:
                try:
                    self._set(k, setting(k, stored[k]))
                except ValueError as e:
                    self._note("config", "stored setting %s=%s ignored: %s"
                               % (k, repr(stored[k])[:40], e))

    def _store(self, changes):
        """Write ``changes`` (name -> value; None removes it) into ``config.json``'s ``settings``
        when any differs from what is stored. A failed write is logged and counted, and the RAM
        state stays: ``cfg`` keeps what is on flash, so the next such command writes again."""
        cfg = self.cfg
        if cfg is None:
            return
        old = cfg.settings if isinstance(cfg.settings, dict) else {}
        new = dict(old)
        changed = []
        for k in changes:
            v = changes[k]
            if v is None:
                if k in new:
                    del new[k]
                    changed.append(k)
            elif k not in new or not _same(new[k], v):
                new[k] = v
                changed.append(k)
        if not changed:
            return
        data = dict(cfg.data)
        data["settings"] = new
        try:
            config.save(self.board, data)
        except Exception as e:  # noqa: BLE001 - flash full, I/O error: the command still holds
            self._note("flash", "%s not saved, in effect until restart: %s"
                       % (",".join(sorted(changed)), _describe(e)))
            return
        cfg.data = data
        cfg.settings = new

    def _note(self, src, msg):
        """Log and count an error that does not stop the workflow (no error screen)."""
        self.errors += 1
        self.last_error = src + ": " + msg
        try:
            self.uplink.note_error(src, msg)
        except Exception:  # noqa: BLE001
            pass

    # --- the loop ---
    def step(self):
        """One slice of work: watchdog, button, current state, uplink, then a short sleep. Never
        raises: an error is shown, logged and reported."""
        b = self.board
        b.wdt_feed()
        try:
            ev = self._button()
            st = self.state
            if st == IDLE:
                self._idle(ev)
            elif st == TEMP:
                self._temp(ev)
            elif st == PPG:
                self._ppg(ev)
            elif st == RESULT:
                self._result(ev)
            elif st == INFO:
                self._info(ev)
            else:
                self._err(ev)
        except Exception as e:  # noqa: BLE001 - the loop must go on whatever failed
            self.fail(e)
        try:
            self._identify()
            self._sync_time()
            self.uplink.step()
        except Exception as e:  # noqa: BLE001
            self.fail(e, source="uplink")
        self.clock.sleep_ms(PPG_STEP_MS if self.state == PPG else IDLE_STEP_MS)

    def fail(self, e, source=None):
        """Show, log and report an error; the app goes to the error screen (idle on a second
        press). The sensors are put to sleep."""
        src = source or _source(e)
        msg = _describe(e)
        self.errors += 1
        self.last_error = src + ": " + msg
        try:
            self.uplink.note_error(src, msg)
        except Exception:  # noqa: BLE001 - logging must not stop the loop either
            pass
        if src in ("mlx90614", "max30102"):
            self.uplink.sensors[src] = "error: " + str(getattr(e, "fault", None) or "fault")
            if src == "max30102":
                self._max_ready = False
        if src == "display":
            self.ui.d = None  # carry on without a screen; the error is in the log and status
        if src == "uplink":
            return
        self._sleep_sensors(quiet=True)
        self.state = ERROR
        self._t_state = self.clock.ticks_ms()
        try:
            self.ui.error(src, msg)
        except Exception:  # noqa: BLE001
            self.ui.d = None

    def _enter(self, state):
        self.state = state
        self._t_state = self.clock.ticks_ms()
        self._drawn = None
        if state == IDLE:
            self._sleep_sensors()
            self._draw_idle()
        elif state == TEMP:
            self._start_temp()
        elif state == PPG:
            self._start_ppg()
        elif state == INFO:
            self.ui.info(self.info_lines(), self.fw)

    def _elapsed(self):
        return self.clock.ticks_diff(self.clock.ticks_ms(), self._t_state)

    # --- button ---
    def _button(self):
        """SHORT on release before 1.5 s, LONG once when held 1.5 s, else None."""
        c = self.clock
        v = self.board.button.value()
        now = c.ticks_ms()
        if v and not self._btn:
            self._btn = 1
            self._t_down = now
            self._long_fired = False
            return None
        if v:
            if not self._long_fired and c.ticks_diff(now, self._t_down) >= LONG_PRESS_MS:
                self._long_fired = True
                return LONG
            return None
        if self._btn:
            self._btn = 0
            if not self._long_fired:
                return SHORT
        return None

    # --- idle ---
    def _idle_key(self):
        return (self.uplink.state, self.uplink.queued, self.patient)

    def _draw_idle(self):
        k = self._idle_key()
        self._drawn = k
        self.ui.idle(k[0], k[1], k[2])

    def _idle(self, ev):
        if ev == SHORT:
            self._enter(TEMP)
        elif ev == LONG:
            self._info_from = IDLE
            self._enter(INFO)
        elif self._idle_key() != self._drawn:
            self._draw_idle()

    # --- sensors ---
    def _sleep_sensors(self, quiet=False):
        """MLX90614 sleep, MAX30102 shutdown. ``quiet``: errors ignored (already failing)."""
        if self._mlx_awake:
            try:
                self.mlx.sleep()
                self._mlx_awake = False
            except Exception as e:  # noqa: BLE001
                if not quiet:
                    raise e
        if self._max_awake:
            try:
                self.max.shutdown()
                self._max_awake = False
            except Exception as e:  # noqa: BLE001
                if not quiet:
                    raise e
        self._stop_accel()

    def _wake_mlx(self):
        if not self._mlx_awake:
            w = getattr(self.board, "mlx_wake", None)
            if w is not None:
                w()
            self._mlx_awake = True
        self.mlx.wait_ready()

    def _wake_max(self):
        if not self._max_ready:
            self.max.reset()
            self.max.check()
            self.max.configure()
            self._max_ready = True
        elif not self._max_awake:
            self.max.wake()
        self._max_awake = True
        self.max.read_fifo()  # discard what was there before the finger prompt

    # --- temperature ---
    def _start_temp(self):
        self.result = Result()
        self.result.patient = self.patient
        self.ui.aim(0)
        self._wake_mlx()
        self.uplink.sensors["mlx90614"] = "ok"
        self.thermo.reset()
        self._n_temp = 0
        self._t_read = self.clock.ticks_ms()

    def _temp(self, ev):
        c = self.clock
        if c.ticks_diff(c.ticks_ms(), self._t_read) < TEMP_PERIOD_MS and self._n_temp:
            return
        self._t_read = c.ticks_ms()
        self.thermo.add(self.mlx.object_cc(), self.mlx.ambient_cc())
        self._n_temp += 1
        if self._n_temp < TEMP_READS:
            self.ui.aim(100 * self._n_temp // TEMP_READS)
            return
        self._temp_result(self.result)
        self.mlx.sleep()
        self._mlx_awake = False
        self._enter(PPG)

    def _temp_result(self, r):
        """Body temperature from the chain (robust average, calibration, forehead-to-core
        offset); ``temp_flag`` "LO"/"HI" outside the rated range (no value then), "no reading"
        when too many reads disagreed. ``q_temp``: share of the reads kept (thousandths)."""
        th = self.thermo
        t, flags = th.result()
        m = th.n_used + th.n_rejected
        r.q_temp = 1000 * th.n_used // m if m else 0
        if t is not None and self.temp_site_offset_cc is not None and th.object_cc is not None:
            t = th.object_cc + self.temp_site_offset_cc
        if t is None:
            r.temp_flag = "no reading"
        elif t < RATED_LO_CC:
            r.temp_flag = "LO"
        elif t > RATED_HI_CC:
            r.temp_flag = "HI"
        else:
            r.temp_cc = t

    # --- SpO2 and pulse ---
    def _start_ppg(self):
        self.ppg.reset()
        self._wake_max()
        self.uplink.sensors["max30102"] = "ok"
        self._start_accel()
        self._t_finger = self.clock.ticks_ms()
        self._good = 0
        self._reports = 0
        self._finger_reports = 0
        self._reason = "no_finger"
        self.ui.finger(PPG_TIMEOUT_MS // 1000, self.result.temp_cc)
        self._t_draw = self.clock.ticks_ms()

    def _feed(self):
        """Drain the FIFO into the chain: per sample nothing is allocated; once a second the
        chain reports and ``_report`` keeps count of consecutive valid reports."""
        d = self.max
        n = d.read_fifo()
        red = d.red
        ir = d.ir
        ch = self.ppg
        for i in range(n):
            if ch.push(red[i], ir[i]):
                self._report()
        if self._acc_on:
            self._feed_accel()
        return n

    # --- the optional motion reference ---
    def _start_accel(self):
        """Start the accelerometer with the MAX30102 (100 Hz, FIFO drained with it). A failure
        is logged and the measurement goes on without a motion reference, as on a board
        without the part: it is optional."""
        a = self.accel
        if a is None:
            return
        try:
            a.start()
            self._acc_on = True
            self.uplink.sensors["lis3dh"] = "ok"
        except Exception as e:  # noqa: BLE001
            self._accel_failed(e)

    def _feed_accel(self):
        a = self.accel
        if a is None:
            return
        try:
            k = a.read_fifo()
        except Exception as e:  # noqa: BLE001
            self._accel_failed(e)
            return
        mr = self.ppg.motion
        x = a.x
        y = a.y
        z = a.z
        for i in range(k):
            mr.push_xyz(x[i], y[i], z[i])

    def _accel_failed(self, e):
        self._acc_on = False
        self.ppg.motion.reset()        # no stale motion: the chain goes on as without the part
        self.uplink.sensors["lis3dh"] = "error: " + str(getattr(e, "fault", None) or "fault")
        try:
            self.uplink.note_error("lis3dh", _describe(e))
        except Exception:  # noqa: BLE001
            pass

    def _stop_accel(self):
        a = self.accel
        if self._acc_on and a is not None:
            self._acc_on = False
            try:
                a.stop()
            except Exception:  # noqa: BLE001 - powering down an optional part: nothing to do
                pass

    def _report(self):
        ch = self.ppg
        self._reports += 1
        w = ch.withheld
        if w != NO_FINGER:
            self._finger_reports += 1
        if w == 0 and ch.hr_x10 > 0 and ch.spo2_x10 > 0:
            self._good += 1
        else:
            self._good = 0
            self._reason = ch.name()

    def _ppg(self, ev):
        c = self.clock
        self._feed()
        if self._good >= STABLE_S:
            self._finish(None)
            return
        now = c.ticks_ms()
        waited = c.ticks_diff(now, self._t_finger)
        if waited >= PPG_TIMEOUT_MS:
            self._finish(self._reason)
            return
        if ev == LONG:  # cancel
            self._finish("cancelled")
            return
        if c.ticks_diff(now, self._t_draw) >= _REDRAW_MS:
            self._t_draw = now
            if self.ppg.withheld == NO_FINGER:
                self.ui.finger((PPG_TIMEOUT_MS - waited + 999) // 1000, self.result.temp_cc)
            else:
                if self._good:
                    p = 60 + 40 * self._good // STABLE_S
                else:
                    p = 60 * self._finger_reports // _SETTLE_REPORTS
                    p = 60 if p > 60 else p
                note = "" if self._good else self._reason.replace("_", " ")
                self.ui.measuring("SpO2 / pulse", p, note)

    def _finish(self, reason):
        r = self.result
        ch = self.ppg
        if reason is None:
            r.spo2 = (ch.spo2_x10 + 5) // 10
            r.hr = (ch.hr_x10 + 5) // 10
            r.pi_cp = ch.pi_x100 if ch.pi_x100 > 0 and self.report_pi else None
            r.q_ppg = ch.q * 10
            r.irregular = bool(ch.irregular)
        else:
            r.reason = reason.replace("_", " ")
        self.max.shutdown()
        self._max_awake = False
        self._stop_accel()
        self.measurements += 1
        self._submit(r)
        self.state = RESULT
        self._t_state = self.clock.ticks_ms()
        self._draw_result()
        if r.alerts:
            self._beep(2400)

    def _submit(self, r):
        """Alerts, then the signed reading into the outbox (when any value was measured)."""
        t_mc = r.temp_cc * 10 if r.temp_cc is not None else None
        obs, flags = reading.observations(temp_mc=t_mc, spo2=r.spo2, hr=r.hr, pi_cp=r.pi_cp,
                                          q_temp=r.q_temp, q_ppg=r.q_ppg)
        r.alerts = flags
        if r.irregular and r.hr is not None:
            flags = flags + ["irregular"]     # not an alert: how the pulse rate was formed
        if not obs:
            r.state = "nothing to send"
            return
        up = self.uplink
        ts, ok = up.timestamp()
        cal = self.cfg.calibration if self.cfg is not None else None
        p = reading.build_reading(ts, ok, up.uptime_s(), self.fw, cal, r.patient, obs, flags)
        r.seq = up.submit(p)
        r.state = up.reading_state(r.seq)
        self.readings += 1
        self.log.info("app", "reading seq=%d queued" % r.seq)

    # --- result ---
    def _draw_result(self):
        r = self.result
        if r.seq is not None:
            r.state = self.uplink.reading_state(r.seq)
        self._drawn = r.state
        self.ui.result(r)

    def _result(self, ev):
        if ev == SHORT:
            self._enter(TEMP)
            return
        if ev == LONG:
            self._info_from = RESULT
            self._enter(INFO)
            return
        if self._elapsed() >= RESULT_TIMEOUT_MS:
            self._enter(IDLE)
            return
        r = self.result
        if r.seq is not None and self.uplink.reading_state(r.seq) != self._drawn:
            self._draw_result()

    # --- info ---
    def info_lines(self):
        """What the info screen shows under the firmware version, as (label, value) pairs."""
        cfg = self.cfg
        cal = cfg.calibration if cfg is not None else None
        due = cal.get("due") if cal else None
        up = self.uplink
        return [("", cfg.device_id if cfg is not None else "?"),
                ("Net", up.state),
                ("Waiting", up.queued),
                ("Cal due", due or "none"),
                ("Pt", self.patient or "-")]

    def _info(self, ev):
        if ev == SHORT or self._elapsed() >= INFO_TIMEOUT_MS:
            if self._info_from == RESULT and self.result is not None:
                self.state = RESULT
                self._t_state = self.clock.ticks_ms()
                self._draw_result()
            else:
                self._enter(IDLE)

    # --- error ---
    def _err(self, ev):
        if ev == SHORT or self._elapsed() >= ERROR_TIMEOUT_MS:
            self._enter(IDLE)
        elif ev == LONG:
            self._info_from = IDLE
            self._enter(INFO)

    # --- wall clock ---
    def _sync_time(self):
        """Try NTP (``board.clock.sync_time``) once a minute while online and never synced."""
        c = self.clock
        if c.unix_time() is not None or self.uplink.state != "online":
            return
        now = c.ticks_ms()
        if self._t_ntp is not None and c.ticks_diff(now, self._t_ntp) < _NTP_RETRY_MS:
            return
        self._t_ntp = now
        if c.sync_time():
            self.log.info("app", "clock synced")

    # --- buzzer ---
    def _beep(self, freq):
        bz = self.board.buzzer
        bz.on(freq)
        self.clock.sleep_ms(150)
        bz.off()

    def _identify(self):
        if self.identify_until is None:
            return
        c = self.clock
        left = c.ticks_diff(self.identify_until, c.ticks_ms())
        bz = self.board.buzzer
        if left <= 0:
            bz.off()
            self.identify_until = None
        elif (left // 500) & 1:
            bz.on(2000)
        else:
            bz.off()
