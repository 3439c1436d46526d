"""A whole nabd site on this machine, built from the real parts: Mosquitto with per-device
credentials and the protocol's ACL, ``nabd-gateway serve`` with its database and FHIR API, and a
virtual device (the unchanged firmware on the simulated board) that measures and publishes.

It does what a site's technician does, through the same commands: ``nabd-gateway init``,
``nabd sim identity``, ``mosquitto_passwd``, ``nabd-gateway devices add``, ``nabd sim run``,
``nabd-gateway devices command``, then reads the records back through the FHIR API and prints the
observatory's counts. ``nabd demo`` drives it; everything lives under one folder and every process
it starts is stopped on the way out.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GATEWAY_USER = "nabd.gateway"     # a '.' never appears in a device id (docs/protocol.md)
COMMAND_USER = "nabd.gateway.cmd"  # `devices command`: may only write commands


class SiteError(RuntimeError):
    pass


def free_port() -> int:
    """A TCP port free on the loopback now (for a service this process is about to start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
    raise SiteError(f"timed out waiting for {what}")


def listening(port: int) -> bool:
    """Something accepts connections on the loopback's ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _run(args: list[str], timeout: float = 180, stdin: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, input=stdin)
    if p.returncode != 0:
        raise SiteError(f"{' '.join(args[:4])} ... exited {p.returncode}:\n{p.stderr.strip()[-2000:]}")
    return p


def _tool(name: str) -> list[str]:
    """A project command from this virtual environment, run as a module so PATH doesn't matter."""
    return [sys.executable, "-m", {"nabd": "host", "nabd-gateway": "gateway.cli"}[name]]


class Site:
    """Broker, gateway and one virtual device under ``folder``."""

    def __init__(self, folder: Path, facility: str = "CS Hay Mohammadi", region: str = "MA-06"):
        self.dir = Path(folder).resolve()
        self.facility = facility
        self.region = region
        self.procs: list[subprocess.Popen] = []
        self.mqtt_port = free_port()
        self.api_port = free_port()
        self.broker_url = f"mqtt://127.0.0.1:{self.mqtt_port}"
        self.api = f"https://127.0.0.1:{self.api_port}"   # HTTPS with a local CA (init --local-tls)
        self.ca_file = self.dir / "gateway" / "api-ca.crt"
        self.gw_config = self.dir / "gateway" / "gateway.toml"
        self.device_state = self.dir / "device"
        self.token = ""
        self.device_id = ""
        self.broker_dir = self.dir / "broker"

    # -- set-up, in the order a technician follows -------------------------------------------------
    def setup(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.broker_dir = self._broker_folder()
        (self.dir / "gateway").mkdir(parents=True)

        # gateway configuration with fresh secrets; the admin token is printed once by init
        out = _run(_tool("nabd-gateway") + ["init", "--config", str(self.gw_config),
                                           "--db", f"sqlite:///{self.dir / 'gateway' / 'records.db'}",
                                           "--broker", self.broker_url,
                                           "--listen", f"127.0.0.1:{self.api_port}",
                                           "--local-tls", "127.0.0.1,localhost", "--json"]).stdout
        self.token = json.loads(out)["admin_token"]
        gw_pass, cmd_pass = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        pw_file = self.dir / "gateway" / "broker.password"
        cmd_pw_file = self.dir / "gateway" / "broker-cmd.password"
        for f, pw in ((pw_file, gw_pass), (cmd_pw_file, cmd_pass)):
            f.touch(mode=0o600)
            f.write_text(pw + "\n")
        text = self.gw_config.read_text()
        # the broker binds client ids to usernames: the serve process' client id is its user
        text = re.sub(r'^client_id = ".*"$', 'client_id = ""', text, count=1, flags=re.M)
        text = re.sub(r'^username = ""$', f'username = "{GATEWAY_USER}"', text, count=1, flags=re.M)
        text = re.sub(r'^password_file = ""$', f'password_file = "{pw_file}"', text, count=1, flags=re.M)
        text = re.sub(r'^command_username = ""$', f'command_username = "{COMMAND_USER}"', text, count=1, flags=re.M)
        text = re.sub(r'^command_password_file = ""$', f'command_password_file = "{cmd_pw_file}"', text,
                      count=1, flags=re.M)
        self.gw_config.write_text(text)

        # the device's identity (made on the device's own flash; printed once for registration)
        ident = json.loads(_run(_tool("nabd") + ["sim", "identity", "--state", str(self.device_state),
                                                 "--broker", self.broker_url, "--json"]).stdout)
        self.device_id = ident["device_id"]

        # broker: one password per device and one for the gateway; the protocol's ACL
        passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        pwdb = self.broker_dir / "passwd"
        _run([passwd, "-c", "-b", str(pwdb), GATEWAY_USER, gw_pass])
        _run([passwd, "-b", str(pwdb), COMMAND_USER, cmd_pass])
        _run([passwd, "-b", str(pwdb), self.device_id, ident["mqtt_password"]])
        acl = self.broker_dir / "acl"
        shutil.copy(REPO / "gateway" / "mosquitto" / "acl", acl)
        (self.broker_dir / "mosquitto.conf").write_text(
            "per_listener_settings false\nallow_anonymous false\n"
            f"password_file {pwdb}\nacl_file {acl}\n"
            f"persistence true\npersistence_location {self.dir / 'broker'}/\nautosave_interval 10\n"
            "max_packet_size 2560\n"
            f"listener {self.mqtt_port} 127.0.0.1\nuse_username_as_clientid true\n"
            f"log_dest file {self.dir / 'broker' / 'mosquitto.log'}\n")
        for p in (pwdb, acl):
            p.chmod(0o600)
        # started as root, Mosquitto drops to its own user: that user owns its folder, nobody else reads it
        if os.geteuid() == 0:
            try:
                import pwd

                mq = pwd.getpwnam("mosquitto")
                for p in [self.broker_dir, *(self.broker_dir).iterdir()]:
                    os.chown(p, mq.pw_uid, mq.pw_gid)
            except KeyError:
                pass

        # the device in the gateway's registry (its signing key, encrypted at rest there)
        _run(_tool("nabd-gateway") + ["devices", "add", self.device_id, "--key", "-",
                                      "--key-version", str(ident["key_version"]), "--facility", self.facility,
                                      "--region", self.region, "--config", str(self.gw_config)],
             stdin=ident["key"] + "\n")  # on stdin: a key in argv is visible to every user (ps)

    def _broker_folder(self) -> Path:
        """Mosquitto started as root runs as the ``mosquitto`` user, who must reach its files; where
        the site folder sits below a private directory, the broker gets a private folder of its own."""
        folder = self.dir / "broker"
        if os.geteuid() == 0 and not all(os.stat(p).st_mode & 0o001 for p in folder.parents):
            import tempfile

            folder = Path(tempfile.mkdtemp(prefix="nabd-broker-"))
            (self.dir / "broker-folder.txt").write_text(str(folder) + "\n")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self._spawn([exe, "-c", str(self.broker_dir / "mosquitto.conf")], self.broker_dir / "stdout.log")
        _wait(lambda: listening(self.mqtt_port), 30, "the broker")
        self._spawn(_tool("nabd-gateway") + ["serve", "--config", str(self.gw_config)],
                    self.dir / "gateway" / "serve.log")
        _wait(self._healthy, 60, "the gateway API (/healthz)")

    def _spawn(self, args: list[str], log: Path) -> None:
        f = open(log, "wb")
        self.procs.append(subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                           env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        f.close()

    def tls(self) -> ssl.SSLContext:
        """A client context trusting the site's API certificate (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _healthy(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise SiteError(f"{p.args[0]} exited {p.returncode}; see the logs under {self.dir}")
        try:
            with urllib.request.urlopen(self.api + "/healthz", timeout=1, context=self.tls()) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
        if self.dir not in self.broker_dir.parents:      # a private temp folder of the broker's own
            shutil.rmtree(self.broker_dir, ignore_errors=True)

    # -- what the site does ------------------------------------------------------------------------
    def measure(self, readings: int, scenario: str = "normal", seed: int = 0, timeout: float = 180) -> dict:
        """``nabd sim run``: the virtual device measures and publishes until the gateway acks all."""
        p = subprocess.run(_tool("nabd") + ["sim", "run", "--state", str(self.device_state), "--broker",
                                            self.broker_url, "--readings", str(readings), "--scenario", scenario,
                                            "--seed", str(seed), "--timeout", str(timeout), "--json"],
                           capture_output=True, text=True, timeout=timeout + 60, cwd=REPO)
        lines = p.stdout.strip().splitlines()
        if not lines:
            raise SiteError(f"nabd sim run printed nothing (exit {p.returncode}): {p.stderr[-2000:]}")
        out = json.loads(lines[-1])
        out["exit"] = p.returncode
        return out

    def assign_patient(self, token: str) -> dict:
        out = _run(_tool("nabd-gateway") + ["devices", "command", self.device_id, "assign-patient", token,
                                            "--config", str(self.gw_config), "--json"]).stdout
        return json.loads(out)

    def get(self, path: str, accept: str = "application/fhir+json") -> dict | str:
        req = urllib.request.Request(self.api + path, headers={"Authorization": f"Bearer {self.token}",
                                                               "Accept": accept})
        with urllib.request.urlopen(req, timeout=10, context=self.tls()) as r:
            body = r.read().decode()
        return json.loads(body) if "json" in accept else body

    # -- the console (gateway/web/console.py) -------------------------------------------------------
    @property
    def console(self) -> str:
        return self.api + "/console/"

    def add_user(self, name: str, role: str, password: str) -> None:
        """``nabd-gateway users add`` with the password on standard input (never in argv)."""
        p = subprocess.run(_tool("nabd-gateway") + ["users", "add", name, "--role", role, "--config",
                                                    str(self.gw_config)], input=password + "\n",
                           capture_output=True, text=True, timeout=120, cwd=REPO)
        if p.returncode != 0:
            raise SiteError(f"nabd-gateway users add {name} exited {p.returncode}: {p.stderr.strip()}")

    def console_page(self, user: str, password: str, path: str) -> str:
        """Log in to the console as a browser does (login form, its CSRF cookie) and GET ``path``."""
        import http.cookiejar
        import re
        import urllib.parse

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar),
                                             urllib.request.HTTPSHandler(context=self.tls()))
        with opener.open(self.api + "/console/login", timeout=10) as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', r.read().decode()).group(1)
        body = urllib.parse.urlencode({"csrf": csrf, "username": user, "password": password}).encode()
        with opener.open(self.api + "/console/login", data=body, timeout=30) as r:
            if "/console/login" in r.url:
                raise SiteError(f"console login as {user} refused")
        with opener.open(self.api + path, timeout=10) as r:
            return r.read().decode()

    def observations(self) -> list[dict]:
        bundle = self.get(f"/fhir/Observation?device={self.device_id}&_count=100")
        return [e["resource"] for e in bundle.get("entry", [])]

    def observatory(self) -> dict:
        day = dt.datetime.now(dt.timezone.utc).date().isoformat()
        return self.get(f"/observatory/device-counts?from={day}&to={day}", accept="application/json")

    def __enter__(self) -> "Site":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
