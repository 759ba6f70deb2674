-- Users, API tokens and UI sessions of the web server (issue 6). Only hashes are kept:
-- passwords as scrypt, tokens and session ids as SHA-256 (they are long random strings).
CREATE TABLE app_user (
    username       TEXT PRIMARY KEY,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
CREATE TABLE api_token (
    token_id     TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    username     TEXT NOT NULL,
    name         TEXT,
    created_at   TEXT NOT NULL,
    expires_at   TEXT
);
CREATE INDEX api_token_user ON api_token (username);
CREATE TABLE web_session (
    session_hash  TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL
);
CREATE INDEX web_session_user ON web_session (username);
