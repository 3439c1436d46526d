-- nabd gateway schema, version 5: device statuses are ordered by the device's connection number,
-- so a replayed old status is refused (docs/protocol.md "Status", gateway/status.py).
-- Why: a status used to replace the stored one in the order received. Anyone able to publish on a
-- device's status topic (its broker password, or a broker replaying retained messages) could put
-- back an old, validly signed status: an old "online" made a dead device look alive, an old
-- "offline" will a live one dead. Statuses now carry "conn" (a counter on the device's flash,
-- one per MQTT connection) and the stored status is replaced only by one that comes after it in
-- (conn, rank, up), rank 0 for online and 1 for offline.
--
-- device_status.conn: the stored status' connection number. Rows written before this version
-- get 0, below every device's first connection (1), so the next status supersedes them.
-- quarantine.reason gains 'stale_status': a verified status that does not come after the stored
-- one. PostgreSQL changes the CHECK constraint in place (the name PostgreSQL gave the column
-- constraint of 0001); SQLite cannot alter a constraint, so the table is rebuilt with the same
-- rows and ids (AUTOINCREMENT's counter follows the rename) and its index made again.

ALTER TABLE device_status ADD COLUMN conn BIGINT NOT NULL DEFAULT 0
;
[postgresql] ALTER TABLE quarantine DROP CONSTRAINT quarantine_reason_check
;
[postgresql] ALTER TABLE quarantine ADD CONSTRAINT quarantine_reason_check CHECK (reason IN (
    'oversized', 'malformed', 'unknown_device', 'revoked', 'bad_signature', 'topic_mismatch', 'replay',
    'invalid', 'future_ts', 'stale_status'))
;
[sqlite] CREATE TABLE quarantine_v5 (
    id {id},
    received_at {ts} NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('oversized', 'malformed', 'unknown_device', 'revoked',
                                          'bad_signature', 'topic_mismatch', 'replay', 'invalid',
                                          'future_ts', 'stale_status')),
    topic TEXT NOT NULL,
    device_hint TEXT,
    raw {bytes} NOT NULL,
    detail TEXT NOT NULL
)
;
[sqlite] INSERT INTO quarantine_v5 (id, received_at, reason, topic, device_hint, raw, detail)
    SELECT id, received_at, reason, topic, device_hint, raw, detail FROM quarantine
;
[sqlite] DROP TABLE quarantine
;
[sqlite] ALTER TABLE quarantine_v5 RENAME TO quarantine
;
[sqlite] CREATE INDEX quarantine_received ON quarantine (received_at)
