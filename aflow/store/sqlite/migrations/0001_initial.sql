-- aflow schema, version 1. Datetimes are ISO-8601 text in UTC (sortable), JSON is text.
CREATE TABLE dag (
    dag_id       TEXT PRIMARY KEY,
    fileloc      TEXT,
    structure    TEXT NOT NULL,
    is_paused    INTEGER NOT NULL DEFAULT 0,
    is_active    INTEGER NOT NULL DEFAULT 1,
    updated_at   TEXT
);

CREATE TABLE import_error (
    filename     TEXT PRIMARY KEY,
    message      TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE dag_run (
    dag_id              TEXT NOT NULL,
    run_id              TEXT NOT NULL,
    run_type            TEXT NOT NULL,
    state               TEXT NOT NULL,
    logical_date        TEXT NOT NULL,
    data_interval_start TEXT,
    data_interval_end   TEXT,
    conf                TEXT NOT NULL DEFAULT '{}',
    created_at          TEXT,
    start_date          TEXT,
    end_date            TEXT,
    triggered_by        TEXT,
    owner               TEXT,
    lease_until         TEXT,
    note                TEXT,
    PRIMARY KEY (dag_id, run_id)
);
CREATE INDEX dag_run_by_state ON dag_run (state);
CREATE INDEX dag_run_by_date ON dag_run (dag_id, logical_date);
CREATE INDEX dag_run_by_owner ON dag_run (owner);

CREATE TABLE task_instance (
    dag_id          TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    task_id         TEXT NOT NULL,
    map_index       INTEGER NOT NULL DEFAULT -1,
    state           TEXT NOT NULL,
    try_number      INTEGER NOT NULL DEFAULT 0,
    max_tries       INTEGER NOT NULL DEFAULT 0,
    start_date      TEXT,
    end_date        TEXT,
    hostname        TEXT,
    operator        TEXT,
    priority_weight INTEGER NOT NULL DEFAULT 1,
    pool            TEXT NOT NULL DEFAULT 'default_pool',
    next_retry_at   TEXT,
    next_method     TEXT,
    next_kwargs     TEXT,
    error           TEXT,
    PRIMARY KEY (dag_id, run_id, task_id, map_index),
    FOREIGN KEY (dag_id, run_id) REFERENCES dag_run (dag_id, run_id) ON DELETE CASCADE
) WITHOUT ROWID;
-- No index on state: every TI changes state several times, and such an index doubles
-- the pages each group commit writes. TIs are read per run (the primary key's prefix).

CREATE TABLE xcom (
    dag_id     TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    map_index  INTEGER NOT NULL DEFAULT -1,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (dag_id, run_id, task_id, map_index, key),
    FOREIGN KEY (dag_id, run_id) REFERENCES dag_run (dag_id, run_id) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE process (
    process_id    TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    hostname      TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    started_at    TEXT NOT NULL,
    heartbeat_at  TEXT NOT NULL
);
