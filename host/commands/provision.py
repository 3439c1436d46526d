"""``nabd provision``: give a device its identity and register it at the site's gateway.

    nabd provision --port PORT --facility NAME --region MA-xx
                   (--gateway GATEWAY.toml [--broker-passwd PASSWD] | --registration FILE)
                   [--broker mqtts://HOST:8883] [--ca CA.pem] [--wifi-ssid SSID] [--json]

On the host: the device id (``nabd-`` + the board's MAC, so it matches the label), a random
32-byte signing key and a random broker password (``secrets``). On the device: ``config.json``,
written atomically (staged as ``config.new``, checked by the firmware's own validator, then renamed
over ``config.json``). The Wi-Fi password comes from ``$NABD_WIFI_PSK`` or a prompt, never from the
command line. Calibration and settings already on the device are kept.

Registration, in the same step:

- ``--gateway GATEWAY.toml``: through the gateway's own library and database (its configuration
  file, as ``nabd-gateway`` uses it; run on the gateway's machine or with its database reachable).
  The key is registered (or rotated) BEFORE the device's new file is committed: a gateway that
  refuses leaves the device as it was. ``--broker-passwd`` also puts the device's line in
  Mosquitto's password file (then HUP the broker).
- ``--registration FILE``: a registration file (0600; key in clear, broker password hashed) that
  ``nabd-gateway devices add --from FILE --broker-passwd PASSWD`` imports at the gateway.

Re-provisioning a provisioned device keeps its id, rotates its key (version N+1 at both ends; the
gateway keeps accepting version N for ``[security] key_grace_hours``) and its broker password,
and says so. Exit 0; 1 the gateway refused; 2 usage; 3 device; 4 bad input file.
"""
from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import secrets
import sys
from pathlib import Path

from host.cli import (
    EXIT_DATA,
    EXIT_DEVICE,
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    add_common,
    emit_json,
)

PSK_ENV = "NABD_WIFI_PSK"


def open_gateway(gateway_toml: str):
    """(config, database, key-encryption key) of the gateway whose configuration file is
    ``gateway_toml`` (on the gateway's machine), its schema brought up to date."""
    from gateway.config import ConfigError, load
    from gateway.db import Database, DatabaseError

    try:
        gw = load(gateway_toml)
        db = Database(gw.database.url)
        db.migrate()
        return gw, db, gw.security.kek()
    except ConfigError as e:
        raise CommandError(f"--gateway: {e}", EXIT_USAGE) from None
    except DatabaseError as e:
        raise CommandError(f"--gateway: the gateway's database: {e}", EXIT_DEVICE) from None

def _wifi_psk(ssid: str) -> str:
    psk = os.environ.get(PSK_ENV)
    if psk is None:
        if not sys.stdin.isatty():
            raise CommandError(f"--wifi-ssid {ssid}: give the Wi-Fi password in ${PSK_ENV} (no terminal to ask on)",
                               EXIT_USAGE)
        psk = getpass.getpass(f"Wi-Fi password for {ssid}: ")
    if psk and not 8 <= len(psk) <= 63:
        raise CommandError("the Wi-Fi password (WPA2) must be 8..63 characters", EXIT_USAGE)
    return psk


def _ca(path: str | None) -> str | None:
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise CommandError(f"--ca {path}: {e.strerror or e}", EXIT_DATA) from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise CommandError(f"--ca {path}: not a PEM certificate", EXIT_DATA)
    return text


def root_of(dev) -> str:
    """The device's flash root as the firmware names it (``""`` on the ESP32)."""
    return dev.call("__import__('firmware.boards').boards.current().storage_root")


def read_config(dev, root: str) -> dict | None:
    """The device's config.json (with its secrets: never print it), None if absent/invalid."""
    raw = dev.read_file(root + "/config.json")
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        from firmware import config

        config.validate(data)
        return data
    except ValueError:
        return None


def remove_staged(dev, root: str) -> None:
    dev.exec(f"import os\nfor _p in ({root + '/config.new'!r}, {root + '/config.new.tmp'!r}):\n"
             " try:\n  os.remove(_p)\n except OSError:\n  pass\n")


def provision(args) -> dict:
    from firmware import config as fwconfig
    from gateway import admin, registration
    from host.device import Device

    if bool(args.gateway) == bool(args.registration):
        raise CommandError("give --gateway GATEWAY.toml (register now) or --registration FILE (for "
                           "`nabd-gateway devices add --from FILE`), one of them", EXIT_USAGE)
    if args.gateway and args.gateway.startswith(("http://", "https://")):
        raise CommandError("--gateway takes the gateway's configuration file (gateway.toml), run on the gateway's "
                           "machine; elsewhere use --registration FILE (the gateway has no registration "
                           "endpoint over HTTP)", EXIT_USAGE)
    if args.broker_passwd and not args.gateway:
        raise CommandError("--broker-passwd goes with --gateway (with --registration, give it to "
                           "`nabd-gateway devices add --from FILE`)", EXIT_USAGE)
    try:
        admin.validate_region(args.region)
    except admin.AdminError as e:
        raise CommandError(f"--region: {e}", EXIT_USAGE) from None
    if not args.facility or len(args.facility) > 128:
        raise CommandError("--facility: a non-empty name of at most 128 characters", EXIT_USAGE)
    if args.broker:
        try:
            fwconfig.parse_broker(args.broker)
        except fwconfig.ConfigError as e:
            raise CommandError(f"--{e}", EXIT_USAGE) from None
    ca = _ca(args.ca)
    gw = db = None
    if args.gateway:
        gw, db, kek = open_gateway(args.gateway)
    psk = _wifi_psk(args.wifi_ssid) if args.wifi_ssid else None

    with Device(args.port) as dev:
        root = root_of(dev)
        uid = dev.call("__import__('binascii').hexlify(__import__('firmware.boards').boards.current()"
                       ".unique_id()).decode()")
        old = read_config(dev, root)
        device_id = old["device_id"] if old else "nabd-" + uid
        key_version = old["key_version"] + 1 if old else 1
        if db is not None:
            status, gw_kv = registration.current_version(db, device_id)
            if status is not None and status != "active":
                raise CommandError(f"refused: device {device_id} is {status} at the gateway; the device is "
                                   "unchanged", EXIT_FAIL)
            if status is not None:
                key_version = max(key_version, gw_kv + 1)
        broker = args.broker or (old or {}).get("broker")
        if not broker:
            raise CommandError("--broker mqtts://HOST:8883 is needed (the device has no broker yet)", EXIT_USAGE)
        key = secrets.token_bytes(32)
        mqtt_password = secrets.token_urlsafe(24)
        wifi = {"ssid": args.wifi_ssid, "psk": psk or ""} if args.wifi_ssid else (old or {}).get("wifi")
        data = {"device_id": device_id, "key": key.hex(), "key_version": key_version,
                "mqtt_password": mqtt_password, "broker": broker,
                "ca": ca if ca is not None else (old or {}).get("ca"),
                "client_cert": (old or {}).get("client_cert"), "client_key": (old or {}).get("client_key"),
                "wifi": wifi, "facility": args.facility,
                "calibration": (old or {}).get("calibration"), "settings": (old or {}).get("settings") or {}}
        if old and "production" in old:          # a production device stays one (REPL locked)
            data["production"] = old["production"]
        try:
            fwconfig.validate(data)
        except fwconfig.ConfigError as e:
            raise CommandError(f"the new configuration is invalid: {e}", EXIT_USAGE) from None

        # 1. staged on the device and checked by the firmware's own validator
        staged = root + "/config.new"
        dev.write_file_atomic(staged, json.dumps(data).encode())
        try:
            dev.exec(f"import json\nfrom firmware import config\nwith open({staged!r}) as _f:\n"
                     " config.validate(json.load(_f))\n")
            # 2. registered at the gateway (or the registration file written)
            reg = registration.Registration(
                device_id, key, key_version, args.facility, args.region,
                registration.broker_passwd_line(device_id, mqtt_password), fw=dev.version or "",
                created_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                created_by=os.environ.get("NABD_ADMIN") or f"nabd provision:{getpass.getuser()}")
            done = {"action": "file", "key_version": key_version}
            if db is not None:
                actor = os.environ.get("NABD_ADMIN") or f"nabd provision:{getpass.getuser()}"
                done = registration.apply(db, kek, reg, gw.security.key_grace_hours, actor)
            else:
                registration.write(Path(args.registration), reg)
        except registration.RegistrationError as e:
            remove_staged(dev, root)
            raise CommandError(f"refused by the gateway: {e}; the device is unchanged", EXIT_FAIL) from None
        except BaseException:
            try:
                remove_staged(dev, root)
            except Exception:  # noqa: BLE001 - the device went away: the staged file is not config.json
                pass
            raise
        # 3. committed: one rename on the device
        dev.exec(f"import os\nos.rename({staged!r}, {root + '/config.json'!r})\n")
        back = dev.call("[_c.device_id, _c.key_version]",
                        setup="from firmware import config, boards\n_c = config.load(boards.current())\n")
    if back != [device_id, key_version]:
        raise CommandError(f"the device reads back {back}, not {[device_id, key_version]}: provision again", 3)
    if args.broker_passwd:      # after the commit: the broker must not know a password the device lacks
        try:
            registration.set_broker_password(Path(args.broker_passwd), reg.broker_passwd)
        except OSError as e:
            raise CommandError(f"--broker-passwd {args.broker_passwd}: {e.strerror or e}; the device is provisioned "
                               "and registered: provision it again to write the line", EXIT_DATA) from None
    out = {"ok": True, "device_id": device_id, "key_version": key_version, "rotated": bool(old),
           "facility": args.facility, "region": args.region, "broker": broker, "fw": dev.version,
           "registered": done["action"] if db is not None else None,
           "registration_file": str(args.registration) if args.registration else None,
           "broker_passwd_set": bool(args.broker_passwd)}
    if gw is not None and old:
        out["old_key_valid_hours"] = gw.security.key_grace_hours
    return out


def cmd_provision(args) -> int:
    out = provision(args)
    if args.json:
        emit_json(out)
        return EXIT_OK
    if out["rotated"]:
        print(f"{out['device_id']} was already provisioned: its key was ROTATED to version {out['key_version']} "
              "and it has a new broker password")
    print(f"provisioned {out['device_id']} (key version {out['key_version']}) for {out['facility']}, "
          f"{out['region']}; broker {out['broker']}")
    if out["registered"]:
        line = f"registered at the gateway ({out['registered']}, key version {out['key_version']})"
        if out.get("old_key_valid_hours") is not None:
            line += f"; the previous key stays valid {out['old_key_valid_hours']:g} h for readings signed with it"
        print(line)
        if out["broker_passwd_set"]:
            print(f"broker password line written to {args.broker_passwd}: reload the broker "
                  "(kill -HUP $(pidof mosquitto))")
        else:
            print("broker password not set: use --broker-passwd, or re-provision with it")
    else:
        print(f"registration file {out['registration_file']} (0600, holds the key): at the gateway run\n"
              f"  nabd-gateway devices add --from {out['registration_file']} --broker-passwd "
              "/etc/mosquitto/nabd/passwd --config /etc/nabd/gateway.toml\nthen delete the file")
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("provision", help="give a device its identity, key and broker, and register it at the gateway",
                       description="Give a device its identity (id, signing key, broker password, made on "
                       "this machine) and register it at the site's gateway in the same step: through the "
                       "gateway's configuration (--gateway) or a registration file (--registration) that "
                       "`nabd-gateway devices add --from FILE` imports. Re-provisioning rotates the key at both "
                       "ends. The Wi-Fi password comes from $NABD_WIFI_PSK or a prompt.")
    add_common(p)
    p.add_argument("--facility", required=True, help="health facility the device serves")
    p.add_argument("--region", required=True, help="ISO 3166-2 region, MA-01..MA-12")
    p.add_argument("--gateway", metavar="GATEWAY.toml", help="register now through the gateway's configuration")
    p.add_argument("--broker-passwd", metavar="PASSWD", help="with --gateway: Mosquitto password file to update")
    p.add_argument("--registration", metavar="FILE", help="write a registration file for "
                   "`nabd-gateway devices add --from FILE`")
    p.add_argument("--broker", metavar="URL", help="mqtt[s]://HOST:PORT the device publishes to "
                   "(default: the one it has)")
    p.add_argument("--ca", metavar="FILE", help="site CA certificate (PEM) for an mqtts:// broker")
    p.add_argument("--wifi-ssid", metavar="SSID", help=f"Wi-Fi network; its password from ${PSK_ENV} or a prompt")
    p.set_defaults(func=cmd_provision)
