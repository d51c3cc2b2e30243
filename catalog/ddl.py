"""The catalog's tables and views (DuckDB SQL), applied on every connection that writes."""

DDL = """
CREATE TABLE IF NOT EXISTS catalog_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    pipeline VARCHAR,
    pipeline_file VARCHAR,
    status VARCHAR,            -- running | succeeded | failed | interrupted
    runner VARCHAR,
    workers INTEGER,
    spec_fingerprint VARCHAR,
    seed BIGINT,
    params JSON,               -- the resolved pipeline spec
    code_version VARCHAR,
    output_path VARCHAR,
    error VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id VARCHAR PRIMARY KEY,
    run_id VARCHAR,
    name VARCHAR,
    kind VARCHAR,              -- input | output
    path VARCHAR,
    n_records BIGINT,
    n_bytes BIGINT,
    fingerprint VARCHAR,       -- hash of the records' content, independent of paths and times
    schema_name VARCHAR,
    schema_version INTEGER,
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS stage_stats (
    run_id VARCHAR,
    step INTEGER,
    stage VARCHAR,
    shape VARCHAR,
    records_in BIGINT,
    records_out BIGINT,
    records_rejected BIGINT,
    records_dropped BIGINT,
    inputs_with_output BIGINT, -- for stages that may emit several records per input
    seconds DOUBLE
);
CREATE TABLE IF NOT EXISTS rejects (
    run_id VARCHAR,
    stage VARCHAR,
    record_id VARCHAR,
    reason VARCHAR,
    detail VARCHAR,
    kind VARCHAR               -- rejected (bad input) | dropped (by design)
);
CREATE TABLE IF NOT EXISTS lineage (
    parent_artifact_id VARCHAR,
    child_artifact_id VARCHAR,
    run_id VARCHAR
);
CREATE TABLE IF NOT EXISTS scores (
    sample_id VARCHAR,
    artifact_id VARCHAR,
    job VARCHAR,
    model VARCHAR,
    revision VARCHAR,
    metric VARCHAR,
    value DOUBLE,
    run_id VARCHAR,
    settings JSON
);

CREATE TABLE IF NOT EXISTS generations (
    model VARCHAR,
    prompt_hash VARCHAR,     -- sha256 of the messages (JSON, sorted keys)
    params_hash VARCHAR,
    backend VARCHAR,
    params JSON,
    text VARCHAR,
    created_at TIMESTAMP
);

CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR,
    stage VARCHAR,
    name VARCHAR,
    value DOUBLE
);

CREATE TABLE IF NOT EXISTS pushes (  -- artifacts published to a Hub dataset repo (no token, ever)
    artifact_id VARCHAR,
    run_id VARCHAR,
    repo VARCHAR,
    revision VARCHAR,
    commit_oid VARCHAR,
    configs JSON,
    files INTEGER,
    n_bytes BIGINT,
    private BOOLEAN,
    endpoint VARCHAR,
    pushed_at TIMESTAMP
);

ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;      -- the driver process, to tell a dead run
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS content_hash VARCHAR;  -- hash of the fields scored
-- the accounting rule's answer for the stage, as the driver computed it (pipelines/engine/accounting.py);
-- NULL for runs recorded before the column existed
ALTER TABLE stage_stats ADD COLUMN IF NOT EXISTS reconciles BOOLEAN;

CREATE OR REPLACE VIEW run_summary AS
SELECT r.run_id, r.pipeline, r.status, r.runner, r.started_at,
       round(epoch(r.finished_at) - epoch(r.started_at), 2) AS seconds,
       (SELECT records_in FROM stage_stats s WHERE s.run_id = r.run_id ORDER BY step, rowid LIMIT 1)
           AS records_read,
       (SELECT sum(records_rejected) FROM stage_stats s WHERE s.run_id = r.run_id) AS rejected,
       (SELECT sum(records_dropped) FROM stage_stats s WHERE s.run_id = r.run_id) AS dropped,
       (SELECT sum(n_records) FROM artifacts a WHERE a.run_id = r.run_id AND a.kind = 'output')
           AS records_out
FROM runs r;

CREATE OR REPLACE VIEW drops_by_reason AS
SELECT run_id, stage, kind, reason, count(*) AS n
FROM rejects GROUP BY ALL;

CREATE OR REPLACE VIEW artifact_producers AS
SELECT a.artifact_id, a.name, a.path, a.fingerprint, a.kind, r.run_id, r.pipeline, r.runner, r.status,
       r.started_at
FROM artifacts a JOIN runs r USING (run_id);

CREATE OR REPLACE VIEW stage_accounting AS
SELECT run_id, step, stage, records_in, records_out, records_rejected, records_dropped, reconciles
FROM stage_stats;
"""
