-- Where the audit chain starts once retention has pruned its oldest rows: the sequence number and
-- hash of the last pruned row, so verification continues from it instead of from zero.
CREATE TABLE audit_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB NOT NULL,
    at   INTEGER NOT NULL
);
