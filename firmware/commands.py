"""Commands from the gateway (docs/protocol.md "Commands"): the one place where each is checked.

    args = commands.check(cmd, args)    # the checked arguments, or ValueError with the reason
    app.command(cmd, args)              # the app only applies what passed

``assign_patient`` {"patient": token or None}; ``identify`` {"seconds": 1..300}; ``settings`` a
dict of ``SETTINGS`` names to values, each checked by ``setting`` (also used for the values kept
in ``config.json``).
"""

NAMES = ("assign_patient", "identify", "settings")
SETTINGS = ("report_pi", "temp_site_offset_c")


def is_int(x):
    """An int that is not a bool (JSON true is not 1 here)."""
    return isinstance(x, int) and not isinstance(x, bool)


def valid_patient(p):
    """A patient token: ^[A-Za-z0-9_-]{4,64}$."""
    if not isinstance(p, str) or not 4 <= len(p) <= 64:
        return False
    for c in p:
        if not (("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "_" or c == "-"):
            return False
    return True


def setting(k, v):
    """The checked value of setting ``k``; ValueError when ``k`` is unknown or ``v`` invalid.
    ``temp_site_offset_c`` in degrees Celsius."""
    if k == "report_pi":
        if not isinstance(v, bool):
            raise ValueError("report_pi must be true or false")
        return v
    if k == "temp_site_offset_c":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -5 <= v <= 5:
            raise ValueError("temp_site_offset_c must be a number within -5..5")
        return v
    raise ValueError("unknown setting " + repr(k))


def check(cmd, args):
    """The arguments of command ``cmd`` once checked (for ``settings`` every key, so that none or
    all are applied); ValueError, whose text is the one-line reason, when anything is wrong."""
    if cmd not in NAMES or not isinstance(args, dict):
        raise ValueError("unknown command " + repr(cmd))
    if cmd == "assign_patient":
        if "patient" not in args or not (args["patient"] is None or valid_patient(args["patient"])):
            raise ValueError("assign_patient needs a patient token or null")
        return args
    if cmd == "identify":
        if not (is_int(args.get("seconds")) and 1 <= args["seconds"] <= 300):
            raise ValueError("identify needs seconds 1..300")
        return args
    checked = {}
    for k in args:
        try:
            checked[k] = setting(k, args[k])
        except ValueError as e:
            raise ValueError("settings refused: " + str(e))
    return checked
