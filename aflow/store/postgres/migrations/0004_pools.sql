-- Named pools: a task takes `pool_slots` slots of its pool while it runs (and, with
-- include_deferred, while it is deferred). `default_pool` always exists; -1 slots means
-- no limit.
CREATE TABLE pool (
    name              TEXT COLLATE "C" PRIMARY KEY,
    slots             INTEGER NOT NULL CHECK (slots >= -1),
    description       TEXT NOT NULL DEFAULT '',
    include_deferred  BOOLEAN NOT NULL DEFAULT FALSE
);
INSERT INTO pool (name, slots, description, include_deferred)
    VALUES ('default_pool', 128, 'Default pool', FALSE);
