-- nabd gateway schema, version 7: named accounts with roles, console sessions, API tokens, the
-- login failures that rate-limit guessing, and which device is assigned to which patient
-- (gateway/web/auth.py, gateway/web/console.py). Same {token} substitution as 0001.
-- (Version 6 is another change; the versions only need to be distinct, gateway/db.py applies each once.)
--
-- Secrets are stored as hashes only: passwords as argon2id strings (salt and parameters inside),
-- session ids and API tokens as the SHA-256 hex of the random value handed to the client, so a
-- copy of the database opens no session and authenticates no client.
-- users.role: clinician (the site's patient records, device assignment), admin (everything),
-- observatory (the de-identified counts only). A disabled user keeps its row (the audit log
-- names it) and loses its sessions and tokens.

CREATE TABLE users (
    id {id},
    username TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('clinician', 'admin', 'observatory')),
    password_hash TEXT NOT NULL,
    created_at {ts} NOT NULL,
    created_by TEXT NOT NULL,
    disabled_at {ts},
    last_login_at {ts}
)
;
CREATE TABLE sessions (
    id_sha256 TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    csrf TEXT NOT NULL,
    created_at {ts} NOT NULL,
    last_seen_at {ts} NOT NULL,
    expires_at {ts} NOT NULL
)
;
CREATE INDEX sessions_user ON sessions (user_id)
;
CREATE TABLE api_tokens (
    id {id},
    user_id BIGINT NOT NULL REFERENCES users(id),
    role TEXT NOT NULL CHECK (role IN ('clinician', 'admin', 'observatory')),
    token_sha256 TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    created_at {ts} NOT NULL,
    expires_at {ts},
    revoked_at {ts},
    last_used_at {ts}
)
;
CREATE TABLE login_failures (
    id {id},
    at {ts} NOT NULL,
    username TEXT NOT NULL,
    client TEXT NOT NULL
)
;
CREATE INDEX login_failures_user ON login_failures (username, at)
;
CREATE INDEX login_failures_client ON login_failures (client, at)
;
CREATE TABLE device_assignments (
    id {id},
    device_id TEXT NOT NULL REFERENCES devices(id),
    patient_id TEXT NOT NULL REFERENCES patients(id),
    started_at {ts} NOT NULL,
    started_by TEXT NOT NULL,
    command_n BIGINT NOT NULL,
    ended_at {ts},
    ended_by TEXT
)
;
CREATE INDEX device_assignments_device ON device_assignments (device_id, ended_at)
;
CREATE INDEX device_assignments_patient ON device_assignments (patient_id, ended_at)
;
CREATE INDEX audit_log_target ON audit_log (target, at)
