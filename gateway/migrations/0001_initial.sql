-- nabd gateway schema, version 1. One text for both dialects: gateway/db.py replaces the
-- {tokens} (identity key, timestamp, date, bytes, boolean, float types) per dialect.
-- Statements are separated by lines holding only ";".

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    facility TEXT NOT NULL,
    region TEXT NOT NULL CHECK (region IN ('MA-01','MA-02','MA-03','MA-04','MA-05','MA-06',
                                          'MA-07','MA-08','MA-09','MA-10','MA-11','MA-12')),
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    fw TEXT,
    cal_id TEXT,
    cal_date {date},
    cal_due {date},
    registered_at {ts} NOT NULL,
    last_seen_at {ts},
    cmd_n INTEGER NOT NULL DEFAULT 0
)
;
CREATE TABLE device_keys (
    device_id TEXT NOT NULL REFERENCES devices(id),
    key_version INTEGER NOT NULL CHECK (key_version >= 1),
    key_enc {bytes} NOT NULL,
    created_at {ts} NOT NULL,
    revoked_at {ts},
    PRIMARY KEY (device_id, key_version)
)
;
CREATE TABLE patients (
    id TEXT PRIMARY KEY,
    created_at {ts} NOT NULL
)
;
CREATE TABLE patient_identities (
    patient_id TEXT NOT NULL REFERENCES patients(id),
    system TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (patient_id, system)
)
;
CREATE TABLE readings (
    id {id},
    device_id TEXT NOT NULL REFERENCES devices(id),
    seq BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    raw {bytes} NOT NULL,
    ts BIGINT NOT NULL,
    ts_ok {bool} NOT NULL,
    received_at {ts} NOT NULL,
    patient_id TEXT,
    fw TEXT,
    CONSTRAINT readings_device_seq UNIQUE (device_id, seq)
)
;
CREATE INDEX readings_patient ON readings (patient_id)
;
CREATE INDEX readings_received ON readings (received_at)
;
CREATE TABLE observations (
    id {id},
    reading_id BIGINT NOT NULL REFERENCES readings(id),
    device_id TEXT NOT NULL,
    patient_id TEXT,
    code TEXT NOT NULL,
    value {float} NOT NULL,
    unit TEXT NOT NULL,
    q {float},
    effective_at {ts} NOT NULL,
    resource TEXT NOT NULL
)
;
CREATE INDEX observations_device ON observations (device_id, effective_at)
;
CREATE INDEX observations_patient ON observations (patient_id, effective_at)
;
CREATE INDEX observations_reading ON observations (reading_id)
;
CREATE TABLE outbox (
    id {id},
    kind TEXT NOT NULL CHECK (kind IN ('fhir', 'observatory')),
    partition_key TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at {ts} NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {ts} NOT NULL,
    sent_at {ts},
    last_error TEXT
)
;
CREATE INDEX outbox_pending ON outbox (kind, sent_at, next_attempt_at)
;
CREATE TABLE quarantine (
    id {id},
    received_at {ts} NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('oversized', 'malformed', 'unknown_device', 'revoked',
                                          'bad_signature', 'topic_mismatch', 'replay', 'invalid',
                                          'future_ts')),
    topic TEXT NOT NULL,
    device_hint TEXT,
    raw {bytes} NOT NULL,
    detail TEXT NOT NULL
)
;
CREATE INDEX quarantine_received ON quarantine (received_at)
;
CREATE TABLE audit_log (
    id {id},
    at {ts} NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT
)
;
CREATE TABLE security_events (
    id {id},
    at {ts} NOT NULL,
    device_id TEXT,
    kind TEXT NOT NULL,
    detail TEXT
)
