-- aflow schema, version 1 (PostgreSQL). Mirrors the SQLite schema column for column.
-- Datetimes are timestamptz (microseconds, compared as instants). JSON is text exactly as
-- the codec writes it (jsonb would turn 2.5e300 into an integer and drop key order).
-- Names are COLLATE "C" so that ORDER BY sorts them bytewise, as SQLite does, whatever
-- the database's collation.
CREATE TABLE dag (
    dag_id       TEXT COLLATE "C" PRIMARY KEY,
    fileloc      TEXT,
    structure    TEXT NOT NULL,
    is_paused    BOOLEAN NOT NULL DEFAULT FALSE,
    is_active    BOOLEAN NOT NULL DEFAULT TRUE,
    updated_at   TIMESTAMPTZ
);

CREATE TABLE import_error (
    filename     TEXT COLLATE "C" PRIMARY KEY,
    message      TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE dag_run (
    dag_id              TEXT COLLATE "C" NOT NULL,
    run_id              TEXT COLLATE "C" NOT NULL,
    run_type            TEXT NOT NULL,
    state               TEXT NOT NULL,
    logical_date        TIMESTAMPTZ NOT NULL,
    data_interval_start TIMESTAMPTZ,
    data_interval_end   TIMESTAMPTZ,
    conf                TEXT NOT NULL DEFAULT '{}',
    created_at          TIMESTAMPTZ,
    start_date          TIMESTAMPTZ,
    end_date            TIMESTAMPTZ,
    triggered_by        TEXT,
    owner               TEXT,
    lease_until         TIMESTAMPTZ,
    note                TEXT,
    PRIMARY KEY (dag_id, run_id)
);
CREATE INDEX dag_run_by_state ON dag_run (state);
CREATE INDEX dag_run_by_date ON dag_run (dag_id, logical_date);
CREATE INDEX dag_run_by_owner ON dag_run (owner);

CREATE TABLE task_instance (
    dag_id          TEXT COLLATE "C" NOT NULL,
    run_id          TEXT COLLATE "C" NOT NULL,
    task_id         TEXT COLLATE "C" NOT NULL,
    map_index       INTEGER NOT NULL DEFAULT -1,
    state           TEXT NOT NULL,
    try_number      INTEGER NOT NULL DEFAULT 0,
    max_tries       INTEGER NOT NULL DEFAULT 0,
    start_date      TIMESTAMPTZ,
    end_date        TIMESTAMPTZ,
    hostname        TEXT,
    operator        TEXT,
    priority_weight INTEGER NOT NULL DEFAULT 1,
    pool            TEXT NOT NULL DEFAULT 'default_pool',
    next_retry_at   TIMESTAMPTZ,
    next_method     TEXT,
    next_kwargs     TEXT,
    error           TEXT,
    PRIMARY KEY (dag_id, run_id, task_id, map_index),
    FOREIGN KEY (dag_id, run_id) REFERENCES dag_run (dag_id, run_id) ON DELETE CASCADE
);
-- No index on state: every TI changes state several times (see the SQLite schema).

CREATE TABLE xcom (
    dag_id     TEXT COLLATE "C" NOT NULL,
    run_id     TEXT COLLATE "C" NOT NULL,
    task_id    TEXT COLLATE "C" NOT NULL,
    map_index  INTEGER NOT NULL DEFAULT -1,
    key        TEXT COLLATE "C" NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (dag_id, run_id, task_id, map_index, key),
    FOREIGN KEY (dag_id, run_id) REFERENCES dag_run (dag_id, run_id) ON DELETE CASCADE
);

CREATE TABLE process (
    process_id    TEXT COLLATE "C" PRIMARY KEY,
    kind          TEXT NOT NULL,
    hostname      TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL
);
