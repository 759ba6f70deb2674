-- Assets (data-aware scheduling). An asset event is one update of an asset (by a task's
-- outlet or an AssetWatcher). Each event is queued, by the trigger below and so in the
-- transaction that records it, for every DAG whose schedule names its asset
-- (asset_consumer, kept from the recorded DAGs). A queued row is consumed by setting the
-- run_id of the asset-triggered run it went to, in the transaction creating that run.
CREATE TABLE asset_event (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    uri               TEXT NOT NULL,
    extra             TEXT NOT NULL DEFAULT '{}',
    source_dag_id     TEXT,
    source_run_id     TEXT,
    source_task_id    TEXT,
    source_map_index  INTEGER NOT NULL DEFAULT -1,
    source_watcher    TEXT,
    created_at        TEXT NOT NULL
);
CREATE INDEX asset_event_by_uri ON asset_event (uri, id);

CREATE TABLE asset_consumer (
    dag_id  TEXT NOT NULL,
    uri     TEXT NOT NULL,
    PRIMARY KEY (dag_id, uri)
) WITHOUT ROWID;
CREATE INDEX asset_consumer_by_uri ON asset_consumer (uri);

CREATE TABLE asset_queue (
    dag_id    TEXT NOT NULL,
    event_id  INTEGER NOT NULL REFERENCES asset_event (id) ON DELETE CASCADE,
    uri       TEXT NOT NULL,
    run_id    TEXT,
    PRIMARY KEY (dag_id, event_id)
) WITHOUT ROWID;
CREATE INDEX asset_queue_by_run ON asset_queue (run_id, dag_id);

CREATE TRIGGER asset_event_queued AFTER INSERT ON asset_event
BEGIN
    INSERT INTO asset_queue (dag_id, event_id, uri)
        SELECT dag_id, NEW.id, NEW.uri FROM asset_consumer WHERE uri = NEW.uri;
END;

-- AssetWatchers recorded from DAG files: the trigger to run for an asset. `kwargs` are
-- the trigger's kwargs for its next wait (NULL once a one-shot trigger has fired);
-- `version` changes when the DAG file changes the watcher, so a triggerer still running
-- the old one records nothing more. Owners hold their lease in trigger_lease.
CREATE TABLE asset_watcher (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    uri             TEXT NOT NULL,
    name            TEXT NOT NULL,
    dag_id          TEXT NOT NULL,
    classpath       TEXT NOT NULL,
    initial_kwargs  TEXT NOT NULL,
    kwargs          TEXT,
    version         INTEGER NOT NULL DEFAULT 1,
    owner           TEXT,
    UNIQUE (uri, name)
);
CREATE INDEX asset_watcher_by_owner ON asset_watcher (owner);
CREATE INDEX asset_watcher_by_dag ON asset_watcher (dag_id);
