-- Hosts enrolled through a join token. `id` is the name in the agent certificate's URI SAN.
CREATE TABLE hosts (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL UNIQUE,
    labels        TEXT NOT NULL DEFAULT '{}',      -- JSON object of label -> value
    enrolled_at   INTEGER NOT NULL,                -- unix ms
    online        INTEGER NOT NULL DEFAULT 0,
    last_seen     INTEGER NOT NULL DEFAULT 0,      -- unix ms, 0 = never
    agent_version TEXT NOT NULL DEFAULT '',
    hostname      TEXT NOT NULL DEFAULT '',
    os            TEXT NOT NULL DEFAULT '',
    arch          TEXT NOT NULL DEFAULT '',
    kernel        TEXT NOT NULL DEFAULT ''
);

-- Join tokens are stored as SHA-256 of the secret; the secret is shown once.
CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY NOT NULL,
    secret_hash BLOB NOT NULL UNIQUE,
    labels      TEXT NOT NULL DEFAULT '{}',
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    uses_left   INTEGER NOT NULL CHECK (uses_left >= 0)
);

-- Human (and later automation) principals. Roles are checked on every call.
CREATE TABLE users (
    name       TEXT PRIMARY KEY NOT NULL,
    role       TEXT NOT NULL,
    disabled   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

-- Every certificate the CA issued, so a serial can be revoked and looked up on each call.
CREATE TABLE certificates (
    serial     TEXT PRIMARY KEY NOT NULL,          -- lower-case hex
    principal  TEXT NOT NULL,                      -- spiffe:// URI
    issued_at  INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX certificates_principal ON certificates (principal);

CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    requested_by TEXT NOT NULL,
    selector     BLOB NOT NULL,                    -- protobuf HostSelector
    action       BLOB NOT NULL,                    -- protobuf JobAction
    concurrency  INTEGER NOT NULL,
    output_cap   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    deadline     INTEGER NOT NULL,
    state        INTEGER NOT NULL,                 -- tailops.v1.JobState
    finished_at  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE job_targets (
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    host_id     TEXT NOT NULL,
    host_name   TEXT NOT NULL,
    state       INTEGER NOT NULL,                  -- tailops.v1.TargetState
    result      BLOB,                              -- protobuf CommandResult
    stdout      BLOB NOT NULL DEFAULT x'',
    stderr      BLOB NOT NULL DEFAULT x'',
    started_at  INTEGER NOT NULL DEFAULT 0,
    finished_at INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, host_id)
);
