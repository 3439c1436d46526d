-- nabd gateway schema, version 4: observations are keyed by their reading; searches go through
-- the readings.
-- Why: a reading carries up to four observations, and each observation row used to be indexed
-- three times (device, patient, reading) beside its own id: twenty B-tree inserts per reading,
-- the largest cost of the ingest (docs/architecture.md, "Throughput"). A reading's device,
-- patient and effective time are the same for all its observations, so they live on the reading
-- (indexed once per reading) and an observation row is (reading_id, pos) -> code, value, unit, q
-- (SQLite: a WITHOUT ROWID table clustered on that key, so a reading's observations are one
-- B-tree range). pos is the observation's place in the signed payload: the order it is served in.
-- readings_received (received_at) served no query; readings_time (effective_at) serves the
-- observatory's daily counts.

ALTER TABLE readings ADD COLUMN effective_at {ts}
;
UPDATE readings SET effective_at = COALESCE(
    (SELECT MIN(o.effective_at) FROM observations o WHERE o.reading_id = readings.id), received_at)
;
[postgresql] ALTER TABLE readings ALTER COLUMN effective_at SET NOT NULL
;
CREATE TABLE observations_v4 (
    reading_id BIGINT NOT NULL REFERENCES readings(id),
    pos SMALLINT NOT NULL,
    code TEXT NOT NULL,
    value {float} NOT NULL,
    unit TEXT NOT NULL,
    q {float},
    resource TEXT,
    PRIMARY KEY (reading_id, pos)
) {without_rowid}
;
INSERT INTO observations_v4 (reading_id, pos, code, value, unit, q, resource)
    SELECT reading_id, ROW_NUMBER() OVER (PARTITION BY reading_id ORDER BY id) - 1, code, value, unit, q, resource
    FROM observations
;
DROP TABLE observations
;
ALTER TABLE observations_v4 RENAME TO observations
;
DROP INDEX readings_patient
;
DROP INDEX readings_received
;
CREATE INDEX readings_device_time ON readings (device_id, effective_at)
;
CREATE INDEX readings_patient_time ON readings (patient_id, effective_at)
;
CREATE INDEX readings_time ON readings (effective_at)
