-- Users, API tokens and UI sessions of the web server (issue 6). Only hashes are kept:
-- passwords as scrypt, tokens and session ids as SHA-256 (they are long random strings).
CREATE TABLE app_user (
    username       TEXT COLLATE "C" PRIMARY KEY,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL
);
CREATE TABLE api_token (
    token_id     TEXT COLLATE "C" PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    username     TEXT COLLATE "C" NOT NULL,
    name         TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ
);
CREATE INDEX api_token_user ON api_token (username);
CREATE TABLE web_session (
    session_hash  TEXT PRIMARY KEY,
    username      TEXT COLLATE "C" NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX web_session_user ON web_session (username);
