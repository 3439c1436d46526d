-- nabd gateway schema, version 2: the latest signed status of each device (docs/protocol.md,
-- "Status"), one row per device, replaced by every verified status message (gateway/status.py).
-- Same {token} substitution as 0001 (gateway/db.py); statements separated by lines holding only ";".
--
-- received_at is the gateway's receipt time: the "last status time". ts/ts_ok are the device's own
-- clock. A Last Will (state offline) is signed when the device connects, so its ts, up, outbox
-- and heap describe that moment, not the moment the connection dropped: order by received_at.
-- sensors is the status' sensors object as JSON text ({"mlx90614": "ok", "max30102": "..."}).

CREATE TABLE device_status (
    device_id TEXT PRIMARY KEY REFERENCES devices(id),
    state TEXT NOT NULL CHECK (state IN ('online', 'offline')),
    ts BIGINT NOT NULL,
    ts_ok {bool} NOT NULL,
    up BIGINT NOT NULL,
    fw TEXT NOT NULL,
    rssi INTEGER,
    heap BIGINT NOT NULL,
    outbox BIGINT NOT NULL,
    drops BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    sensors TEXT NOT NULL,
    cal_due {date},
    key_version INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    received_at {ts} NOT NULL,
    state_since {ts} NOT NULL,
    messages BIGINT NOT NULL DEFAULT 1
)
;
CREATE INDEX device_status_state ON device_status (state)
