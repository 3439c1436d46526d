-- nabd gateway schema, version 3: observations.resource becomes optional.
-- The ingest no longer writes each Observation's FHIR JSON: an observation row keeps its values
-- (code, value, unit, q, effective_at) and its reading, whose signed bytes (readings.raw) and
-- receipt time are the whole source of the resource; the API and the forwarder render the FHIR
-- JSON from them when they need it (gateway/recordstore.py). Rows written before this version
-- keep their stored resource, which is served as it is.
-- PostgreSQL drops the NOT NULL; SQLite cannot, so it rebuilds the table (same columns, ids kept).

[postgresql] ALTER TABLE observations ALTER COLUMN resource DROP NOT NULL
;
[sqlite] CREATE TABLE observations_v3 (
    id {id},
    reading_id BIGINT NOT NULL REFERENCES readings(id),
    device_id TEXT NOT NULL,
    patient_id TEXT,
    code TEXT NOT NULL,
    value {float} NOT NULL,
    unit TEXT NOT NULL,
    q {float},
    effective_at {ts} NOT NULL,
    resource TEXT
)
;
[sqlite] INSERT INTO observations_v3 (id, reading_id, device_id, patient_id, code, value, unit, q, effective_at, resource)
    SELECT id, reading_id, device_id, patient_id, code, value, unit, q, effective_at, resource FROM observations
;
[sqlite] DROP TABLE observations
;
[sqlite] ALTER TABLE observations_v3 RENAME TO observations
;
[sqlite] CREATE INDEX observations_device ON observations (device_id, effective_at)
;
[sqlite] CREATE INDEX observations_patient ON observations (patient_id, effective_at)
;
[sqlite] CREATE INDEX observations_reading ON observations (reading_id)
