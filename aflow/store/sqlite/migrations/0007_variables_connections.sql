-- Variables and Connections (issue 7). A connection's password and extra are Fernet
-- tokens made by aflow.secrets: the database never holds them in clear.
CREATE TABLE variable (
    key          TEXT PRIMARY KEY,
    value        TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT ''
);
CREATE TABLE connection (
    conn_id       TEXT PRIMARY KEY,
    conn_type     TEXT NOT NULL,
    host          TEXT,
    port          INTEGER,
    login         TEXT,
    password_enc  TEXT,
    schema        TEXT,
    extra_enc     TEXT,
    description   TEXT NOT NULL DEFAULT ''
);
