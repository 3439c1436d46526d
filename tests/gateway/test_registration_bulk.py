"""Bulk registration (gateway.registration.apply_all) on a real SQLite database: new devices in one
transaction, devices already active with the file's key version kept, a newer key version rotated
through ``apply``'s checks, and a refused device refusing the whole batch of new ones."""
from __future__ import annotations

import os

import pytest

from gateway import admin, registration
from gateway.db import Database
from gateway.registration import Registration, RegistrationError, apply_all
from tests.support.harness import rows


def reg(i: int, kv: int = 1) -> Registration:
    dev = f"nabd-bulk{i:03d}"
    return Registration(dev, os.urandom(32), kv, "clinic-0", "MA-06", registration.broker_passwd_line(dev, "pw"))


@pytest.fixture
def db(tmp_path):
    d = Database(f"sqlite:///{tmp_path}/gw.db")
    d.migrate()
    return d


def test_new_devices_added_known_ones_kept_and_a_newer_key_rotated(db):
    kek = os.urandom(32)
    first = [reg(i) for i in range(5)]
    assert apply_all(db, kek, first, 24.0, "test") == {"registered": 5, "already_registered": 0}
    assert rows(db.url, "SELECT COUNT(*) FROM devices WHERE status = 'active'") == [(5,)]
    assert rows(db.url, "SELECT COUNT(*) FROM audit_log WHERE action = 'devices.add'") == [(5,)]
    again = first[:4] + [reg(4, kv=2), reg(5)]          # device 4 provisioned again; device 5 new
    assert apply_all(db, kek, again, 24.0, "test") == {"registered": 2, "already_registered": 4}
    assert rows(db.url, "SELECT MAX(key_version) FROM device_keys WHERE device_id = 'nabd-bulk004'") == [(2,)]
    assert rows(db.url, "SELECT COUNT(*) FROM devices") == [(6,)]


def test_a_refused_device_is_named_and_the_new_ones_are_not_added(db):
    kek = os.urandom(32)
    apply_all(db, kek, [reg(0)], 24.0, "test")
    admin.revoke_device(db, "nabd-bulk000", actor="test")
    with pytest.raises(RegistrationError, match="nabd-bulk000 is revoked"):
        apply_all(db, kek, [reg(1), reg(0, kv=2)], 24.0, "test")
    bad = reg(2)
    bad.region = "XX"
    with pytest.raises(RegistrationError):
        apply_all(db, kek, [reg(3), bad], 24.0, "test")
    assert rows(db.url, "SELECT id FROM devices ORDER BY id") == [("nabd-bulk000",)]
