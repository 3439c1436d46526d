-- nabd gateway schema, version 6: a quarantine that cannot fill the disk (gateway/quarantine.py).
-- Why: every rejected message cost a row with up to 4 KiB of its bytes, and the same retained
-- junk was filed again at every gateway restart: one device's broker password could grow the
-- database by ~28 MB/s.
--
-- quarantine.sha256/size: the digest and length of the whole message (a row keeps at most 4 KiB
-- of its bytes); hits/last_at: the same bytes received again count on the row instead of adding
-- one. Rows written before this version have no digest (NULL) and hits 1.
-- quarantine_floods: one line per device (the topic's, tied to the broker username by the ACL)
-- whose rejected messages went past its budget: how many were counted without being kept, their
-- bytes, the digest and reason of the last, when the episode began and when the last came.

ALTER TABLE quarantine ADD COLUMN sha256 TEXT
;
ALTER TABLE quarantine ADD COLUMN size BIGINT
;
ALTER TABLE quarantine ADD COLUMN hits BIGINT NOT NULL DEFAULT 1
;
ALTER TABLE quarantine ADD COLUMN last_at {ts}
;
CREATE INDEX quarantine_sha256 ON quarantine (sha256)
;
CREATE TABLE quarantine_floods (
    device TEXT PRIMARY KEY,
    first_at {ts} NOT NULL,
    last_at {ts} NOT NULL,
    suppressed BIGINT NOT NULL,
    suppressed_bytes BIGINT NOT NULL,
    last_sha256 TEXT NOT NULL,
    last_reason TEXT NOT NULL
)
