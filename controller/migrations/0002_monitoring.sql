-- Monitoring and inventory.

-- Metric rows name their host by a small integer rather than the host's text id: a sample row
-- is then a few dozen bytes, which is what keeps ingest fast and a year of rollups small.
CREATE TABLE metric_series (
    id      INTEGER PRIMARY KEY NOT NULL,
    host_id TEXT NOT NULL UNIQUE REFERENCES hosts (id) ON DELETE CASCADE
);

-- Raw samples, kept for `monitoring.raw_retention` (48 h by default). Per-mount and
-- per-interface detail is kept only for the latest sample (`metrics_latest`).
CREATE TABLE metrics_raw (
    series        INTEGER NOT NULL,
    at            INTEGER NOT NULL,                -- unix ms
    cpu           REAL NOT NULL,
    load1         REAL NOT NULL,
    load5         REAL NOT NULL,
    load15        REAL NOT NULL,
    mem_total     INTEGER NOT NULL,
    mem_used      INTEGER NOT NULL,
    mem_available INTEGER NOT NULL,
    swap_total    INTEGER NOT NULL,
    swap_used     INTEGER NOT NULL,
    disk_pct      REAL NOT NULL,                   -- the fullest mount
    net_rx        REAL NOT NULL,                   -- bytes per second
    net_tx        REAL NOT NULL,
    uptime        INTEGER NOT NULL,
    procs         INTEGER NOT NULL,
    PRIMARY KEY (series, at)
) WITHOUT ROWID;
-- Rollups and pruning walk time ranges across every host.
CREATE INDEX metrics_raw_at ON metrics_raw (at);

-- Rollups: one row per host and bucket (`at` is the bucket start). Averages, plus maxima where
-- a spike matters; `samples` weights the averages when minutes are rolled into hours.
CREATE TABLE metrics_1m (
    series       INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    samples      INTEGER NOT NULL,
    cpu          REAL NOT NULL,
    cpu_max      REAL NOT NULL,
    load1        REAL NOT NULL,
    mem_used     REAL NOT NULL,
    mem_used_max REAL NOT NULL,
    mem_total    REAL NOT NULL,
    swap_used    REAL NOT NULL,
    disk_pct     REAL NOT NULL,
    disk_pct_max REAL NOT NULL,
    net_rx       REAL NOT NULL,
    net_tx       REAL NOT NULL,
    procs        REAL NOT NULL,
    PRIMARY KEY (series, at)
) WITHOUT ROWID;
CREATE INDEX metrics_1m_at ON metrics_1m (at);

CREATE TABLE metrics_1h (
    series       INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    samples      INTEGER NOT NULL,
    cpu          REAL NOT NULL,
    cpu_max      REAL NOT NULL,
    load1        REAL NOT NULL,
    mem_used     REAL NOT NULL,
    mem_used_max REAL NOT NULL,
    mem_total    REAL NOT NULL,
    swap_used    REAL NOT NULL,
    disk_pct     REAL NOT NULL,
    disk_pct_max REAL NOT NULL,
    net_rx       REAL NOT NULL,
    net_tx       REAL NOT NULL,
    procs        REAL NOT NULL,
    PRIMARY KEY (series, at)
) WITHOUT ROWID;
CREATE INDEX metrics_1h_at ON metrics_1h (at);

-- How far each rollup has been computed: buckets before `done_until` are final unless late
-- samples arrive, in which case the rollup task recomputes from there.
CREATE TABLE metric_rollups (
    name       TEXT PRIMARY KEY NOT NULL,           -- '1m' | '1h'
    done_until INTEGER NOT NULL
);

-- The newest full sample per host (protobuf MetricSample), so a restarted controller can show
-- the fleet before the first new samples arrive.
CREATE TABLE metrics_latest (
    host_id TEXT PRIMARY KEY NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    at      INTEGER NOT NULL,
    sample  BLOB NOT NULL
);

-- Current facts per host, as flat dotted keys.
CREATE TABLE facts (
    host_id    TEXT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (host_id, key)
) WITHOUT ROWID;

-- Inventory change history: one row per changed key. NULL old value: the fact appeared;
-- NULL new value: it disappeared.
CREATE TABLE fact_changes (
    id        INTEGER PRIMARY KEY NOT NULL,
    at        INTEGER NOT NULL,
    host_id   TEXT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT
);
CREATE INDEX fact_changes_host_at ON fact_changes (host_id, at);
CREATE INDEX fact_changes_at ON fact_changes (at);
