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

-- Users (humans) and bridges (automation). Role, scope and standing are read on every call.
CREATE TABLE principals (
    kind       TEXT NOT NULL CHECK (kind IN ('user', 'bridge')),
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    scope      BLOB,                               -- protobuf HostSelector; NULL = every host
    disabled   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);

-- One-time invites for users and bridges, stored as SHA-256 of the secret.
CREATE TABLE invites (
    id          TEXT PRIMARY KEY NOT NULL,
    secret_hash BLOB NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    scope       BLOB,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);

-- Every certificate the CA issued, so a serial can be revoked and looked up on each call.
CREATE TABLE certificates (
    serial     TEXT PRIMARY KEY NOT NULL,          -- lower-case hex
    principal  TEXT NOT NULL,                      -- spiffe:// URI
    issued_at  INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    revoked_at INTEGER,
    revoked_reason TEXT
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
    timeout_ms   INTEGER NOT NULL,
    state        INTEGER NOT NULL,                 -- tailops.v1.JobState
    finished_at  INTEGER NOT NULL DEFAULT 0,
    reason       TEXT NOT NULL DEFAULT '',         -- the requester's, shown to approvers
    approval_expires_at INTEGER NOT NULL DEFAULT 0,-- 0 = no approval needed
    decided_by   TEXT NOT NULL DEFAULT ''
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

-- Append-only audit log. Each row carries the hash of the previous row and of its own canonical
-- content, so altering, deleting, inserting or reordering rows breaks the chain.
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY NOT NULL,
    at        INTEGER NOT NULL,
    principal TEXT NOT NULL,
    action    TEXT NOT NULL,
    targets   TEXT NOT NULL,                       -- JSON array
    arguments TEXT NOT NULL,                       -- JSON object, secrets never included
    decision  TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);
CREATE INDEX audit_at ON audit (at);
