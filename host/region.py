"""A region's topology on this machine, generated from code: K clinic Mosquitto brokers (the
devices' only contact, persistent) each bridged over QoS 1 to one regional Mosquitto, where G
``nabd-gateway serve`` processes share the readings' subscription and write to one PostgreSQL.

What each file says and why is in ``docs/operations.md`` ("A region: clinic brokers bridged to a
regional hub"). In short, least privilege at every hop:

- a clinic broker knows only its own devices (its password file) and gives each only its own
  topics (the protocol's ``pattern`` lines); its bridge is the broker's own client;
- the regional broker knows the gateways (``nabd.gateway.N``) and one bridge user per clinic
  (``nabd.bridge.clinic-K``: a "." never appears in a device id). A bridge user may write only
  its clinic's devices' ``reading`` and ``status`` topics and read only their ``ack`` and ``cmd``
  topics, one ACL line per device: a clinic cannot publish as another clinic's device nor see its
  acks and commands. The bridge configuration names the same per-device topics (``out`` for
  readings and statuses, ``in`` for acks and commands, QoS 1, ``cleansession false`` so the
  regional broker queues acks and commands while the link is down and the clinic broker queues
  readings);
- every gateway process has its own broker user (one client id each, ``use_username_as_clientid``)
  and they share one database and one key-encryption key.

    region = Region(Path("build/region"), clinics=2, gateways=2, db_url="postgresql://...")
    region.add_devices(fleet)       # registered at the gateway, passwords at their clinic broker
    region.write()                  # every configuration file
    region.start()                  # brokers, bridges, gateways
    region.clinic_url(k)            # where clinic k's devices connect
    region.kill_gateway(0); region.start_gateway(0)
    region.stop()

A clinic's bridge can be pointed at another address than the regional broker's (``uplink``:
``{clinic: (host, port)}``), e.g. a link that tests cut and restore.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from host.site import free_port, listening

REPO = Path(__file__).resolve().parent.parent
DEVICE_ACL = ("pattern write nabd/v1/dev/%u/reading\npattern write nabd/v1/dev/%u/status\n"
              "pattern read  nabd/v1/dev/%u/ack\npattern read  nabd/v1/dev/%u/cmd\n")
# per-device topics crossing a bridge, with their direction as seen from the clinic broker
BRIDGED = (("reading", "out"), ("status", "out"), ("ack", "in"), ("cmd", "in"))



def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux ``/proc``; a process gone meanwhile has none)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return [pid] + [q for k in kids for q in process_tree(int(k))]

class RegionError(RuntimeError):
    pass


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def bridge_user(clinic: int) -> str:
    return f"nabd.bridge.clinic-{clinic}"


def gateway_user(n: int) -> str:
    return f"nabd.gateway.{n + 1}"


class Region:
    """See the module docstring. ``broker_user``: Mosquitto's ``user`` line (``root`` where tests
    run as root and keep their files in private folders; None: Mosquitto's default)."""

    def __init__(self, folder: Path, clinics: int, gateways: int, db_url: str, broker_user: str | None = None,
                 uplink: dict | None = None, max_queued: int = 100000):
        if clinics < 1 or gateways < 1:
            raise ValueError("a region needs >= 1 clinic and >= 1 gateway")
        self.dir = Path(folder).resolve()
        self.clinics = clinics
        self.gateways = gateways
        self.db_url = db_url
        self.broker_user = broker_user
        self.max_queued = max_queued
        self.regional_port = free_port()
        self.clinic_ports = [free_port() for _ in range(clinics)]
        self.uplink = dict(uplink or {})
        self.devices: dict[int, list[tuple[str, str]]] = {k: [] for k in range(clinics)}  # id, passwd line
        self.brokers: dict[str, subprocess.Popen] = {}
        self.gw: dict[int, subprocess.Popen] = {}
        self._secrets = {u: secrets.token_urlsafe(24)
                         for u in [gateway_user(n) for n in range(gateways)] + [bridge_user(k) for k in range(clinics)]}
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kek = self.dir / "gateway.kek"
        if not self.kek.exists():
            _write_secret(self.kek, os.urandom(32).hex() + "\n")

    # --- addresses ---
    @property
    def regional_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.regional_port}"

    def clinic_url(self, k: int) -> str:
        return f"mqtt://127.0.0.1:{self.clinic_ports[k]}"

    def clinic_urls(self) -> list[str]:
        return [self.clinic_url(k) for k in range(self.clinics)]

    def gateway_config(self, n: int) -> Path:
        return self.dir / f"gateway-{n + 1}" / "gateway.toml"

    # --- devices ---
    def add_devices(self, fleet) -> dict:
        """Register a ``sim.fleet.Fleet`` or ``FleetShards`` (its clinic ``k`` devices at clinic broker ``k``) at the
        gateway through ``gateway.registration.apply_all`` (new devices in one transaction);
        devices already registered with the same key version are kept. Call before ``write()``."""
        from gateway import registration
        from gateway.db import Database

        if fleet.clinics != self.clinics:
            raise RegionError(f"the fleet has {fleet.clinics} clinics, the region {self.clinics}")
        self.write_gateways()
        db = Database(self.db_url)
        db.migrate()
        kek = bytes.fromhex(self.kek.read_text().strip())
        by_id = fleet.clinic_of()
        regs = fleet.registrations()
        counts = registration.apply_all(db, kek, regs, 24.0, "nabd region")
        for reg in regs:
            self.devices[by_id[reg.device_id]].append((reg.device_id, reg.broker_passwd))
        return counts

    # --- configuration files ---
    def _broker_common(self, folder: Path) -> str:
        return ((f"user {self.broker_user}\n" if self.broker_user else "")
                + "per_listener_settings false\nallow_anonymous false\n"
                f"password_file {folder}/passwd\nacl_file {folder}/acl\n"
                f"persistence true\npersistence_location {folder}/\nautosave_interval 10\n"
                "autosave_on_changes false\n"
                # a clinic's link may stay down for hours: its bridge queue must hold what its
                # devices measure meanwhile (beyond it Mosquitto drops; the devices resend)
                f"max_queued_messages {self.max_queued}\nmax_inflight_messages 20\n"
                "max_packet_size 2560\nqueue_qos0_messages false\n"
                f"log_dest file {folder}/mosquitto.log\nlog_type error\nlog_type warning\nlog_type notice\n")

    def write_gateways(self) -> None:
        for n in range(self.gateways):
            cfg = self.gateway_config(n)
            cfg.parent.mkdir(parents=True, exist_ok=True)
            _write_secret(cfg.parent / "broker.password", self._secrets[gateway_user(n)] + "\n")
            cfg.write_text(
                f'[broker]\nurl = "{self.regional_url}"\nusername = "{gateway_user(n)}"\nclient_id = ""\n'
                f'password_file = "{cfg.parent / "broker.password"}"\nsession_expiry_s = 3600\n\n'
                f'[database]\nurl = "{self.db_url}"\n\n'
                "[ingest]\nbatch_max = 1024\nbatch_ms = 5\nqueue_max = 4096\nreceive_maximum = 4096\n\n"
                '[api]\nlisten = "127.0.0.1:0"\n\n'
                f'[security]\nkek_file = "{self.kek}"\n')

    def write(self) -> None:
        """Every broker's configuration, password file and ACL, and every gateway's."""
        from gateway.registration import broker_passwd_line

        self.write_gateways()
        reg = self.dir / "regional"
        reg.mkdir(parents=True, exist_ok=True)
        users = [gateway_user(n) for n in range(self.gateways)] + [bridge_user(k) for k in range(self.clinics)]
        _write_secret(reg / "passwd", "".join(broker_passwd_line(u, self._secrets[u]) + "\n" for u in users))
        acl = ["# generated by host/region.py: gateways read readings/statuses, write acks/commands"]
        for n in range(self.gateways):
            acl += [f"user {gateway_user(n)}", "topic read nabd/v1/dev/+/reading", "topic read nabd/v1/dev/+/status",
                    "topic write nabd/v1/dev/+/ack", "topic write nabd/v1/dev/+/cmd", ""]
        for k in range(self.clinics):
            acl.append(f"# clinic {k}'s bridge: only its own devices, readings/statuses up, acks/commands down")
            acl.append(f"user {bridge_user(k)}")
            for dev, _ in self.devices[k]:
                acl += [f"topic {'write' if d == 'out' else 'read'} nabd/v1/dev/{dev}/{t}" for t, d in BRIDGED]
            acl.append("")
        _write_secret(reg / "acl", "\n".join(acl) + "\n")
        (reg / "mosquitto.conf").write_text(
            self._broker_common(reg) + "persistent_client_expiration 14d\n"
            f"listener {self.regional_port} 127.0.0.1\nuse_username_as_clientid true\n")
        for k in range(self.clinics):
            self._write_clinic(k)

    def _write_clinic(self, k: int) -> None:
        c = self.dir / f"clinic-{k}"
        c.mkdir(parents=True, exist_ok=True)
        _write_secret(c / "passwd", "".join(line + "\n" for _, line in self.devices[k]))
        _write_secret(c / "acl", "# generated by host/region.py: each device only its own topics\n" + DEVICE_ACL)
        host, port = self.uplink.get(k, ("127.0.0.1", self.regional_port))
        user = bridge_user(k)
        bridge = [f"connection {user}", f"address {host}:{port}", "bridge_protocol_version mqttv311",
                  f"remote_clientid {user}", f"remote_username {user}", f"remote_password {self._secrets[user]}",
                  f"local_clientid {user}.local", "cleansession false", "try_private true",
                  # no $SYS notifications: the bridge user may publish nothing but its devices' topics
                  "notifications false", "restart_timeout 1 10", "keepalive_interval 30",
                  "start_type automatic", "bridge_attempt_unsubscribe false"]
        for dev, _ in self.devices[k]:
            bridge += [f"topic nabd/v1/dev/{dev}/{t} {d} 1" for t, d in BRIDGED]
        # the bridge's password is in this file: 0600 like the password file
        text = (self._broker_common(c) + "persistent_client_expiration 14d\n"
                f"listener {self.clinic_ports[k]} 127.0.0.1\nuse_username_as_clientid true\n\n"
                + "\n".join(bridge) + "\n")
        _write_secret(c / "mosquitto.conf", text)

    # --- processes ---
    def _start_broker(self, name: str, port: int) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        folder = self.dir / name
        self.brokers[name] = subprocess.Popen([exe, "-c", str(folder / "mosquitto.conf")],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 30
        while not listening(port):
            if self.brokers[name].poll() is not None or time.monotonic() > end:
                log = (folder / "mosquitto.log").read_text(errors="replace")[-2000:] \
                    if (folder / "mosquitto.log").exists() else ""
                raise RegionError(f"the {name} broker did not start: {log}")
            time.sleep(0.05)

    def start_gateway(self, n: int, timeout: float = 30.0) -> None:
        log = open(self.gateway_config(n).parent / "serve.log", "ab")
        p = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.gateway_config(n)),
                              "--no-api"], cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                             stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        self.gw[n] = p
        path = self.gateway_config(n).parent / "serve.log"
        start = path.stat().st_size
        end = time.monotonic() + timeout
        while "connected to" not in path.read_text(errors="replace")[start:]:
            if p.poll() is not None or time.monotonic() > end:
                raise RegionError(f"gateway {n + 1} did not connect: " + path.read_text(errors="replace")[-2000:])
            time.sleep(0.05)

    def kill_gateway(self, n: int) -> None:
        """SIGKILL gateway ``n`` (a crash: nothing is flushed or acknowledged on the way out)."""
        p = self.gw.pop(n)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)

    def restart_broker(self, name: str) -> None:
        """Stop the broker ``name`` (``regional`` or ``clinic-K``: SIGTERM, it saves its
        persistence file) and start it again on the same port."""
        p = self.brokers.pop(name)
        p.terminate()
        p.wait(timeout=30)
        port = self.regional_port if name == "regional" else self.clinic_ports[int(name.split("-")[1])]
        self._start_broker(name, port)

    def pids(self) -> dict[str, list[int]]:
        """Process ids: ``brokers`` and ``gateways`` (each gateway with its store process)."""
        return {"brokers": [p.pid for p in self.brokers.values()],
                "gateways": [q for p in self.gw.values() for q in process_tree(p.pid)]}

    def start(self) -> None:
        self._start_broker("regional", self.regional_port)
        for k in range(self.clinics):
            self._start_broker(f"clinic-{k}", self.clinic_ports[k])
        for n in range(self.gateways):
            self.start_gateway(n)

    def stop(self) -> None:
        procs = list(self.gw.values()) + list(self.brokers.values())
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.gw.clear()
        self.brokers.clear()

    def __enter__(self) -> "Region":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
