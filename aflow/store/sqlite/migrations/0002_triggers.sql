-- Deferred waits. A row is a parked trigger and the TI try it wakes; the event is
-- committed into the row when it fires and the row is deleted when the TI resumes.
CREATE TABLE trigger (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    classpath    TEXT NOT NULL,
    kwargs       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    timeout_at   TEXT,
    owner        TEXT,
    lease_until  TEXT,
    dag_id       TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    map_index    INTEGER NOT NULL DEFAULT -1,
    try_number   INTEGER NOT NULL,
    event        TEXT,
    fired_at     TEXT,
    FOREIGN KEY (dag_id, run_id) REFERENCES dag_run (dag_id, run_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX trigger_by_ti ON trigger (dag_id, run_id, task_id, map_index);
CREATE INDEX trigger_unfired ON trigger (fired_at, lease_until);

-- Webhook events delivered by key, kept until consumed, so an event that arrives before
-- its sensor starts waiting is not missed.
CREATE TABLE webhook_event (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX webhook_event_by_key ON webhook_event (key, id);
