-- Deadline misses (issue 7): one row per (run, task or '' for the run, alert), written
-- before the alert is sent; the primary key makes the first writer the only one that
-- sends it, across restarts and processes.
CREATE TABLE deadline_miss (
    dag_id       TEXT COLLATE "C" NOT NULL,
    run_id       TEXT COLLATE "C" NOT NULL,
    task_id      TEXT COLLATE "C" NOT NULL DEFAULT '',
    alert_index  INTEGER NOT NULL,
    deadline_at  TIMESTAMPTZ NOT NULL,
    missed_at    TIMESTAMPTZ NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    owner        TEXT,
    alert_state  TEXT NOT NULL,
    alert_error  TEXT,
    PRIMARY KEY (dag_id, run_id, task_id, alert_index)
);
