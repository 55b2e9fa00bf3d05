//! The controller's durable state in SQLite (WAL, migrations embedded), behind one narrow type so
//! another backend can replace it without touching the services.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use tailops_pki::IssuedCertificate;
use tailops_proto::time::format_ms;
use tailops_proto::v1;

use crate::result_writer::{HostResult, JobEnd};

mod monitoring;
mod retention;

pub use monitoring::{
    ChangeFilter, FactsApplied, MAX_HOST_FACT_BYTES, MAX_HOST_FACTS, MetricTable, SampleRow,
};

/// Labels on hosts and tokens.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(
        "the controller's disk is full: its database ({}) cannot grow, so nothing that needs a \
         write can be done; free space on that disk (reads go on meanwhile)",
        .0.display()
    )]
    DiskFull(PathBuf),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    #[error("unknown join token; create one with `tailopsctl token create`")]
    TokenUnknown,
    #[error("join token expired at {0}; create a new one with `tailopsctl token create`")]
    TokenExpired(String),
    #[error("join token has no uses left; create a new one with `tailopsctl token create`")]
    TokenUsedUp,
    #[error("a host named {0:?} is already enrolled; pick another name with --name")]
    HostNameTaken(String),
    #[error("unknown invite; ask an admin for a new one (`tailopsctl users invite`)")]
    InviteUnknown,
    #[error("invite expired at {0}; ask an admin for a new one")]
    InviteExpired(String),
    #[error("invite was already used; ask an admin for a new one")]
    InviteUsed,
    #[error("{0} already exists")]
    PrincipalExists(String),
    #[error("{0}")]
    Limit(String),
    #[error("a host name may not look like a host id (a UUID): {0:?}; pick another name with --name")]
    HostNameLikeId(String),
}

/// A join token as stored: only the hash of its secret.
#[derive(Debug, Clone)]
pub struct NewJoinToken {
    pub id: String,
    pub secret_hash: Vec<u8>,
    pub labels: Labels,
    pub created_by: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub uses: u32,
}

/// A host about to be enrolled.
#[derive(Debug, Clone)]
pub struct NewHost {
    pub id: String,
    pub name: String,
    /// The identity URI its certificate will carry.
    pub principal_uri: String,
}

/// A user or bridge as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPrincipal {
    /// `user` or `bridge`.
    pub kind: String,
    pub name: String,
    pub role: String,
    /// `None`: every host.
    pub scope: Option<v1::HostSelector>,
}

/// A principal's standing, read on every call.
#[derive(Debug, Clone, PartialEq)]
pub struct PrincipalRecord {
    pub principal: NewPrincipal,
    pub disabled: bool,
    pub created_at_ms: i64,
}

/// A one-time invite, stored as the hash of its secret.
#[derive(Debug, Clone)]
pub struct NewInvite {
    pub id: String,
    pub secret_hash: Vec<u8>,
    pub principal: NewPrincipal,
    pub created_by: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// What the agent reports about itself in its `Hello`.
#[derive(Debug, Clone, Default)]
pub struct HostReport {
    pub agent_version: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub kernel: String,
}

/// Rows per multi-row statement in batch writes. Every statement is a round trip to sqlx's
/// SQLite worker thread, so a batch of 1,000 rows written one statement per row costs 1,000
/// thread hand-offs; with up to 8 bound values per row this stays far below SQLite's limit on
/// bound variables (32,766).
const ROWS_PER_STATEMENT: usize = 500;

/// The revocation reason of certificates replaced by a newer one in use.
pub const SUPERSEDED: &str = "superseded by a renewed certificate";

/// How many of a principal's newest certificates stay usable after a renewal, besides the one
/// the renewal came with: two, so that two clients renewing one profile at once both keep
/// working.
pub const LIVE_CERTIFICATES: usize = 2;

/// Whether a presented certificate may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStanding {
    Usable,
    /// Not issued by this controller to this principal.
    Unknown,
    Revoked,
    /// Replaced by a renewal that is already in use: whoever presents it holds a copy.
    Superseded,
}

/// A new job and the hosts it resolved to.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub requested_by: String,
    /// The requester's client ('' if none).
    pub requested_via: String,
    pub selector: v1::HostSelector,
    pub action: v1::JobAction,
    pub concurrency: u32,
    pub output_cap: u64,
    pub created_at_ms: i64,
    /// 0 while the job waits for approval.
    pub deadline_ms: i64,
    pub timeout_ms: i64,
    pub reason: String,
    /// Set (non-zero) when the job needs approval before this time.
    pub approval_expires_at_ms: i64,
    /// How long offline hosts are waited for (0: not at all).
    pub queue_for_ms: i64,
    /// How far its reads reach on the hosts, fixed when it is authorised.
    pub reach: v1::ReadReach,
    pub targets: Vec<v1::JobTarget>,
}

/// An unfinished job as stored: waiting for approval, or running when the controller stopped.
#[derive(Debug, Clone)]
pub struct StoredJob {
    pub job: v1::Job,
    pub targets: Vec<v1::TargetDetail>,
    pub timeout_ms: u64,
    pub output_cap: u64,
    pub approval_expires_at_ms: i64,
    pub queue_for_ms: u64,
    pub reach: v1::ReadReach,
}

/// The final record of one host's part in a job.
#[derive(Debug, Clone)]
pub struct TargetOutcome {
    pub state: v1::TargetState,
    pub result: v1::CommandResult,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Store {
    /// Read-only connections: WAL lets readers run beside the writer.
    pool: SqlitePool,
    /// The one connection that writes. Writers queue for it in order instead of meeting at
    /// SQLite's lock, whose busy handler sleeps (1, 2, 5, 10 ms, ...) and retries: with the
    /// result, audit, heartbeat and metric writers all committing at once, those sleeps were
    /// the tail of every large fan-out.
    writer: SqlitePool,
    host_keys: Arc<Mutex<HostKeyCache>>,
    /// The database file, named in errors a person must act on (a full disk).
    path: Arc<Path>,
}

/// What selectors and scopes look at in a host.
pub trait HostIdentity {
    fn id(&self) -> &str;
    fn name(&self) -> &str;
    fn label(&self, key: &str) -> Option<&str>;
}

impl HostIdentity for v1::Host {
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// A host's id, name and labels: all that resolving a job's targets needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    pub id: String,
    pub name: String,
    pub labels: Labels,
}

impl HostIdentity for HostKey {
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Every host's [`HostKey`], loaded on first use after a change. Ids, names and labels change
/// only when a host is enrolled or deleted, and reading every host row for each job cost about
/// 5 µs per host (50 ms of a 10,000-host fan-out).
/// The database holds every job's output and the audit log: readable by the controller's user
/// only, whatever the umask (SQLite gives its -wal and -shm files the database's mode).
async fn restrict_to_owner(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match tokio::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = ?file, error = %e, "cannot make the database private (chmod 600)")
            }
        }
    }
}

#[derive(Debug, Default)]
struct HostKeyCache {
    /// Bumped by every change, so a load that raced a change is not kept.
    generation: u64,
    keys: Option<Arc<[HostKey]>>,
}

impl StoreError {
    /// Whether the write failed because the disk (or the filesystem's quota) is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::DiskFull(_) => true,
            // SQLITE_FULL is result code 13; an extended code keeps it in its low byte.
            Self::Db(sqlx::Error::Database(db)) => {
                db.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| c & 0xff == 13)
            }
            Self::Db(sqlx::Error::Io(io)) => io.raw_os_error() == Some(nix::libc::ENOSPC),
            _ => false,
        }
    }
}

impl Store {
    /// `e`, naming the database file if the disk is full.
    pub fn name_disk_full(&self, e: StoreError) -> StoreError {
        if e.is_disk_full() { StoreError::DiskFull(self.path.to_path_buf()) } else { e }
    }

    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL is durable against process crashes and only loses the last
            // transactions on power loss, at a fraction of FULL's fsync cost.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone().create_if_missing(true))
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        restrict_to_owner(path).await;
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options.read_only(true)).await?;
        Ok(Self { pool, writer, host_keys: Arc::default(), path: Arc::from(path) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read-only connections, for modules that keep their own tables (the audit log).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The writing connection, for single-statement writes.
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// A transaction on the writing connection that takes SQLite's write lock up front. A
    /// deferred one that reads first and writes later fails with SQLITE_BUSY when another
    /// process wrote in between, which the busy timeout cannot retry.
    pub(crate) async fn write_transaction(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        match self.writer.begin_with("BEGIN IMMEDIATE").await {
            // A commit that failed (a full disk) leaves the one writing connection believing it
            // is still inside that transaction (SQLite rolled it back, so sqlx's own rollback
            // fails too), and it then refuses every later one: the store would never write
            // again. A fresh connection starts clean.
            Err(sqlx::Error::InvalidSavePointStatement) => {
                tracing::warn!(
                    "the writing database connection was left in a failed transaction; reconnecting"
                );
                if let Ok(stuck) = self.writer.acquire().await {
                    let _ = stuck.close().await;
                }
                Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
            }
            begun => Ok(begun?),
        }
    }

    // ----- join tokens and enrollment -------------------------------------------------------

    pub async fn insert_join_token(&self, token: &NewJoinToken) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (id, secret_hash, labels, created_by, created_at, expires_at, uses_left)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&token.id)
        .bind(&token.secret_hash)
        .bind(labels_to_json(&token.labels))
        .bind(&token.created_by)
        .bind(token.created_at_ms)
        .bind(token.expires_at_ms)
        .bind(i64::from(token.uses))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Consumes one use of the token, records the host and its certificate, atomically: if any
    /// step fails (bad token, name taken), nothing is written and the token keeps its use.
    ///
    /// The host's labels are the token's: an agent does not choose what selects it for jobs or
    /// which scopes cover it. A name equal to any host's id is refused, since selectors and
    /// scopes match a host by name or id. `issue` signs the certificate.
    pub async fn enroll_host<E>(
        &self,
        secret_hash: &[u8],
        host: &NewHost,
        now_ms: i64,
        issue: impl FnOnce() -> Result<IssuedCertificate, E>,
    ) -> Result<Result<(Labels, IssuedCertificate), E>, StoreError> {
        let NewHost { id: host_id, name, principal_uri } = host;
        let mut tx = self.write_transaction().await?;
        let row = sqlx::query("SELECT labels, expires_at, uses_left FROM join_tokens WHERE secret_hash = ?")
            .bind(secret_hash)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::TokenUnknown)?;
        let expires_at: i64 = row.try_get("expires_at")?;
        if expires_at <= now_ms {
            return Err(StoreError::TokenExpired(format_ms(expires_at)));
        }
        if row.try_get::<i64, _>("uses_left")? <= 0 {
            return Err(StoreError::TokenUsedUp);
        }
        let labels = labels_from_json(&row.try_get::<String, _>("labels")?)?;
        if sqlx::query("SELECT 1 FROM hosts WHERE id = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            return Err(StoreError::HostNameLikeId(name.clone()));
        }

        sqlx::query("UPDATE join_tokens SET uses_left = uses_left - 1 WHERE secret_hash = ?")
            .bind(secret_hash)
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO hosts (id, name, labels, enrolled_at) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(host_id)
        .bind(name)
        .bind(labels_to_json(&labels))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::HostNameTaken(name.clone()));
        }
        let cert = match issue() {
            Ok(cert) => cert,
            Err(e) => return Ok(Err(e)),
        };
        insert_certificate(&mut *tx, &cert, principal_uri, now_ms).await?;
        tx.commit().await?;
        self.hosts_changed();
        Ok(Ok((labels, cert)))
    }

    // ----- principals and certificates ------------------------------------------------------

    pub async fn insert_principal(&self, principal: &NewPrincipal, now_ms: i64) -> Result<(), StoreError> {
        insert_principal(&self.writer, principal, now_ms).await
    }

    pub async fn principal(&self, kind: &str, name: &str) -> Result<Option<PrincipalRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM principals WHERE kind = ? AND name = ?")
            .bind(kind)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(principal_from_row).transpose()
    }

    pub async fn list_principals(&self) -> Result<Vec<PrincipalRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM principals ORDER BY kind, name").fetch_all(&self.pool).await?;
        rows.iter().map(principal_from_row).collect()
    }

    /// Returns the updated principal, or `None` if there is no such principal.
    pub async fn set_principal_disabled(
        &self,
        kind: &str,
        name: &str,
        disabled: bool,
    ) -> Result<Option<PrincipalRecord>, StoreError> {
        sqlx::query("UPDATE principals SET disabled = ? WHERE kind = ? AND name = ?")
            .bind(disabled)
            .bind(kind)
            .bind(name)
            .execute(&self.writer)
            .await?;
        self.principal(kind, name).await
    }

    pub async fn set_principal_role(
        &self,
        kind: &str,
        name: &str,
        role: &str,
        scope: Option<&v1::HostSelector>,
    ) -> Result<Option<PrincipalRecord>, StoreError> {
        sqlx::query("UPDATE principals SET role = ?, scope = ? WHERE kind = ? AND name = ?")
            .bind(role)
            .bind(scope.map(Message::encode_to_vec))
            .bind(kind)
            .bind(name)
            .execute(&self.writer)
            .await?;
        self.principal(kind, name).await
    }

    // ----- invites --------------------------------------------------------------------------

    pub async fn insert_invite(&self, invite: &NewInvite) -> Result<(), StoreError> {
        let exists = sqlx::query("SELECT 1 FROM principals WHERE kind = ? AND name = ?")
            .bind(&invite.principal.kind)
            .bind(&invite.principal.name)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_some() {
            return Err(StoreError::PrincipalExists(format!(
                "{} {}",
                invite.principal.kind, invite.principal.name
            )));
        }
        sqlx::query(
            "INSERT INTO invites (id, secret_hash, kind, name, role, scope, created_by, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&invite.id)
        .bind(&invite.secret_hash)
        .bind(&invite.principal.kind)
        .bind(&invite.principal.name)
        .bind(&invite.principal.role)
        .bind(invite.principal.scope.as_ref().map(Message::encode_to_vec))
        .bind(&invite.created_by)
        .bind(invite.created_at_ms)
        .bind(invite.expires_at_ms)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Marks the invite used, creates its principal and records its first certificate,
    /// atomically. `issue` receives the principal to sign for.
    pub async fn redeem_invite<E>(
        &self,
        secret_hash: &[u8],
        now_ms: i64,
        issue: impl FnOnce(&NewPrincipal) -> Result<(IssuedCertificate, String), E>,
    ) -> Result<Result<(NewPrincipal, IssuedCertificate), E>, StoreError> {
        let mut tx = self.write_transaction().await?;
        let row = sqlx::query("SELECT * FROM invites WHERE secret_hash = ?")
            .bind(secret_hash)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::InviteUnknown)?;
        if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            return Err(StoreError::InviteUsed);
        }
        let expires_at: i64 = row.try_get("expires_at")?;
        if expires_at <= now_ms {
            return Err(StoreError::InviteExpired(format_ms(expires_at)));
        }
        let scope: Option<Vec<u8>> = row.try_get("scope")?;
        let principal = NewPrincipal {
            kind: row.try_get("kind")?,
            name: row.try_get("name")?,
            role: row.try_get("role")?,
            scope: scope.map(|s| decode("scope", &s)).transpose()?,
        };
        sqlx::query("UPDATE invites SET used_at = ? WHERE secret_hash = ?")
            .bind(now_ms)
            .bind(secret_hash)
            .execute(&mut *tx)
            .await?;
        if let Err(e) = insert_principal(&mut *tx, &principal, now_ms).await {
            return Err(match e {
                StoreError::Db(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    StoreError::PrincipalExists(format!("{} {}", principal.kind, principal.name))
                }
                other => other,
            });
        }
        let (cert, uri) = match issue(&principal) {
            Ok(issued) => issued,
            Err(e) => return Ok(Err(e)),
        };
        insert_certificate(&mut *tx, &cert, &uri, now_ms).await?;
        tx.commit().await?;
        Ok(Ok((principal, cert)))
    }

    pub async fn record_certificate(
        &self,
        cert: &IssuedCertificate,
        principal_uri: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        insert_certificate(&self.writer, cert, principal_uri, now_ms).await
    }

    /// Records a certificate renewed over `parent` (the certificate the request came with), so
    /// that revoking `parent` also revokes it, and retires the principal's older certificates:
    /// besides `parent`, only the [`LIVE_CERTIFICATES`] newest stay usable, so a principal (or a
    /// thief renewing a copied key in a loop) cannot pile up live certificates, and a retired
    /// copy that is presented again is detected as a clone. Returns how many were retired.
    pub async fn record_renewal(
        &self,
        cert: &IssuedCertificate,
        principal_uri: &str,
        parent: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_transaction().await?;
        insert_certificate(&mut *tx, cert, principal_uri, now_ms).await?;
        sqlx::query("UPDATE certificates SET parent_serial = ? WHERE serial = ?")
            .bind(parent)
            .bind(&cert.serial)
            .execute(&mut *tx)
            .await?;
        let retired = sqlx::query(
            "UPDATE certificates SET revoked_at = ?1, revoked_reason = ?2
             WHERE principal = ?3 AND revoked_at IS NULL AND serial != ?4
               AND serial NOT IN (SELECT serial FROM certificates WHERE principal = ?3 AND revoked_at IS NULL
                                  ORDER BY rowid DESC LIMIT ?5)",
        )
        .bind(now_ms)
        .bind(SUPERSEDED)
        .bind(principal_uri)
        .bind(parent)
        .bind(i64::try_from(LIVE_CERTIFICATES).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(retired)
    }

    /// Whether the certificate with `serial` may be used by `principal_uri`: it must have been
    /// issued by this controller to that principal and not be revoked. Unknown = no.
    pub async fn certificate_standing(
        &self,
        serial: &str,
        principal_uri: &str,
    ) -> Result<CertStanding, StoreError> {
        let row =
            sqlx::query("SELECT principal, revoked_at, revoked_reason FROM certificates WHERE serial = ?")
                .bind(serial)
                .fetch_optional(&self.pool)
                .await?;
        let Some(r) = row else { return Ok(CertStanding::Unknown) };
        if r.try_get::<String, _>("principal")? != principal_uri {
            return Ok(CertStanding::Unknown);
        }
        Ok(match r.try_get::<Option<i64>, _>("revoked_at")? {
            None => CertStanding::Usable,
            Some(_) => {
                let reason: Option<String> = r.try_get("revoked_reason")?;
                if reason.as_deref() == Some(SUPERSEDED) {
                    CertStanding::Superseded
                } else {
                    CertStanding::Revoked
                }
            }
        })
    }

    /// Marks every older unrevoked certificate of `principal_uri` superseded by `serial`, the
    /// one it just connected with: after a renewal, a copy of the old key is worthless, and its
    /// use reveals the copy. Returns how many were superseded.
    pub async fn supersede_older_certificates(
        &self,
        principal_uri: &str,
        serial: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE certificates SET revoked_at = ?, revoked_reason = ?
             WHERE principal = ? AND serial != ? AND revoked_at IS NULL
               AND issued_at < (SELECT issued_at FROM certificates WHERE serial = ?)",
        )
        .bind(now_ms)
        .bind(SUPERSEDED)
        .bind(principal_uri)
        .bind(serial)
        .bind(serial)
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    pub async fn list_certificates(
        &self,
        principal: &str,
        include_expired: bool,
        now_ms: i64,
    ) -> Result<Vec<v1::CertificateRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM certificates WHERE (? = '' OR principal = ?) AND (? OR not_after > ?) ORDER BY issued_at DESC",
        )
        .bind(principal)
        .bind(principal)
        .bind(include_expired)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(certificate_from_row).collect()
    }

    /// Revokes one certificate and every certificate renewed from it, transitively (whoever
    /// holds the revoked key may have renewed it); `None` if the serial is unknown. Revoking
    /// twice keeps the first time and reason. Returns the record and the serials of the renewals
    /// revoked with it.
    pub async fn revoke_certificate(
        &self,
        serial: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Option<(v1::CertificateRecord, Vec<String>)>, StoreError> {
        let mut tx = self.write_transaction().await?;
        sqlx::query("UPDATE certificates SET revoked_at = ?, revoked_reason = ? WHERE serial = ? AND revoked_at IS NULL")
            .bind(now_ms)
            .bind(reason)
            .bind(serial)
            .execute(&mut *tx)
            .await?;
        let renewals: Vec<String> = sqlx::query(
            "WITH RECURSIVE lineage (serial) AS (
                 SELECT serial FROM certificates WHERE parent_serial = ?1
                 UNION SELECT c.serial FROM certificates c JOIN lineage l ON c.parent_serial = l.serial
             )
             UPDATE certificates SET revoked_at = ?2, revoked_reason = ?3
             WHERE serial IN (SELECT serial FROM lineage) AND revoked_at IS NULL
             RETURNING serial",
        )
        .bind(serial)
        .bind(now_ms)
        .bind(format!("renewed from revoked certificate {serial}: {reason}"))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get("serial"))
        .collect::<Result<_, _>>()?;
        let row = sqlx::query("SELECT * FROM certificates WHERE serial = ?")
            .bind(serial)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row.as_ref().map(certificate_from_row).transpose()?.map(|record| (record, renewals)))
    }

    /// Revokes every unrevoked certificate of a principal; returns how many.
    pub async fn revoke_principal_certificates(
        &self,
        principal_uri: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query("UPDATE certificates SET revoked_at = ?, revoked_reason = ? WHERE principal = ? AND revoked_at IS NULL")
            .bind(now_ms)
            .bind(reason)
            .bind(principal_uri)
            .execute(&self.writer)
            .await?
            .rows_affected())
    }

    // ----- join tokens ----------------------------------------------------------------------

    /// Tokens that can still be used.
    pub async fn list_join_tokens(&self, now_ms: i64) -> Result<Vec<v1::JoinTokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM join_tokens WHERE uses_left > 0 AND expires_at > ? ORDER BY created_at DESC",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(v1::JoinTokenRecord {
                    id: r.try_get("id")?,
                    labels: labels_from_json(&r.try_get::<String, _>("labels")?)?,
                    created_by: r.try_get("created_by")?,
                    created_at_ms: r.try_get("created_at")?,
                    expires_at_ms: r.try_get("expires_at")?,
                    uses_left: u32::try_from(r.try_get::<i64, _>("uses_left")?).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Uses up a token; returns whether it existed with uses left.
    pub async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("UPDATE join_tokens SET uses_left = 0 WHERE id = ? AND uses_left > 0")
            .bind(id)
            .execute(&self.writer)
            .await?
            .rows_affected()
            > 0)
    }

    // ----- hosts ----------------------------------------------------------------------------

    pub async fn list_hosts(&self) -> Result<Vec<v1::Host>, StoreError> {
        let rows = sqlx::query("SELECT * FROM hosts ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(host_from_row).collect()
    }

    /// Every host's id, name and labels, ordered by name; from memory unless hosts changed.
    pub async fn host_keys(&self) -> Result<Arc<[HostKey]>, StoreError> {
        let generation = {
            let cache = self.lock_host_keys();
            if let Some(keys) = &cache.keys {
                return Ok(keys.clone());
            }
            cache.generation
        };
        let rows =
            sqlx::query("SELECT id, name, labels FROM hosts ORDER BY name").fetch_all(&self.pool).await?;
        let keys = rows
            .iter()
            .map(|row| {
                Ok(HostKey {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    labels: labels_from_json(&row.try_get::<String, _>("labels")?)?,
                })
            })
            .collect::<Result<Arc<[HostKey]>, StoreError>>()?;
        let mut cache = self.lock_host_keys();
        if cache.generation == generation {
            cache.keys = Some(keys.clone());
        }
        Ok(keys)
    }

    /// Called after a commit that enrolled or deleted a host.
    fn hosts_changed(&self) {
        let mut cache = self.lock_host_keys();
        cache.generation += 1;
        cache.keys = None;
    }

    fn lock_host_keys(&self) -> std::sync::MutexGuard<'_, HostKeyCache> {
        self.host_keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub async fn host(&self, id: &str) -> Result<Option<v1::Host>, StoreError> {
        let row = sqlx::query("SELECT * FROM hosts WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(host_from_row).transpose()
    }

    /// A host by id or name.
    pub async fn find_host(&self, name_or_id: &str) -> Result<Option<v1::Host>, StoreError> {
        // An id match wins: a host enrolled before names were kept apart from ids may be named
        // like another host's id, and must not be mistaken for it.
        let row = sqlx::query("SELECT * FROM hosts WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1")
            .bind(name_or_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(host_from_row).transpose()
    }

    /// How many jobs are in each state, by state name (`running`, `succeeded`, ...).
    pub async fn job_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows =
            sqlx::query("SELECT state, count(*) AS n FROM jobs GROUP BY state").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let state = v1::JobState::try_from(row.try_get::<i32, _>("state")?).unwrap_or_default();
                let name = state.as_str_name().trim_start_matches("JOB_STATE_").to_ascii_lowercase();
                Ok((name, u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0)))
            })
            .collect()
    }

    /// Removes a host with its metrics, facts and change history; its name becomes free. Past
    /// jobs keep their copy of its name.
    pub async fn delete_host(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.write_transaction().await?;
        Self::delete_host_metrics(&mut tx, id).await?;
        let deleted =
            sqlx::query("DELETE FROM hosts WHERE id = ?").bind(id).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        self.hosts_changed();
        Ok(deleted > 0)
    }

    pub async fn mark_online(&self, id: &str, report: &HostReport, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE hosts SET online = 1, last_seen = ?, agent_version = ?, hostname = ?, os = ?, arch = ?, kernel = ?
             WHERE id = ?",
        )
        .bind(now_ms)
        .bind(&report.agent_version)
        .bind(&report.hostname)
        .bind(&report.os)
        .bind(&report.arch)
        .bind(&report.kernel)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn mark_offline(&self, id: &str, last_seen_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET online = 0, last_seen = max(last_seen, ?) WHERE id = ?")
            .bind(last_seen_ms)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records heartbeat times for many hosts in one transaction.
    pub async fn record_last_seen(&self, seen: &[(String, i64)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_transaction().await?;
        for chunk in seen.chunks(ROWS_PER_STATEMENT) {
            let mut update =
                QueryBuilder::<Sqlite>::new("UPDATE hosts SET last_seen = max(last_seen, v.column2) FROM (");
            update.push_values(chunk, |mut row, (id, at)| {
                row.push_bind(id).push_bind(at);
            });
            update.push(") AS v WHERE hosts.id = v.column1");
            update.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// At start-up no agent is connected yet, whatever the last run left behind.
    pub async fn mark_all_offline(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET online = 0 WHERE online = 1").execute(&self.writer).await?;
        Ok(())
    }

    // ----- jobs -----------------------------------------------------------------------------

    /// Persists a job and one pending row per target; returns the job id.
    pub async fn create_job(&self, job: &NewJob) -> Result<u64, StoreError> {
        let mut tx = self.write_transaction().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO jobs (requested_by, requested_via, selector, action, concurrency, output_cap, created_at,
                               deadline, timeout_ms, reason, approval_expires_at, state, queue_for_ms, reach)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&job.requested_by)
        .bind(&job.requested_via)
        .bind(job.selector.encode_to_vec())
        .bind(job.action.encode_to_vec())
        .bind(i64::from(job.concurrency))
        .bind(i64::try_from(job.output_cap).unwrap_or(i64::MAX))
        .bind(job.created_at_ms)
        .bind(job.deadline_ms)
        .bind(job.timeout_ms)
        .bind(&job.reason)
        .bind(job.approval_expires_at_ms)
        .bind(if job.approval_expires_at_ms > 0 {
            v1::JobState::PendingApproval
        } else {
            v1::JobState::Running
        } as i32)
        .bind(job.queue_for_ms)
        .bind(job.reach as i32)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        for chunk in job.targets.chunks(ROWS_PER_STATEMENT) {
            let mut insert =
                QueryBuilder::<Sqlite>::new("INSERT INTO job_targets (job_id, host_id, host_name, state) ");
            insert.push_values(chunk, |mut row, target| {
                row.push_bind(id)
                    .push_bind(&target.host_id)
                    .push_bind(&target.host_name)
                    .push_bind(v1::TargetState::Pending as i32);
            });
            insert.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("negative job id {id}")))
    }

    /// Records many hosts' final results, then the final state of jobs whose results are all
    /// in, in one transaction.
    pub async fn finish_targets(&self, results: &[HostResult], ends: &[JobEnd]) -> Result<(), StoreError> {
        if results.is_empty() && ends.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_transaction().await?;
        for chunk in results.chunks(ROWS_PER_STATEMENT) {
            let mut update = QueryBuilder::<Sqlite>::new(
                "UPDATE job_targets SET state = v.column3, result = v.column4, stdout = v.column5, \
                 stderr = v.column6, started_at = v.column7, finished_at = v.column8 FROM (",
            );
            update.push_values(chunk, |mut row, r| {
                let outcome = &r.outcome;
                row.push_bind(job_id_sql(r.job_id))
                    .push_bind(&r.host_id)
                    .push_bind(outcome.state as i32)
                    .push_bind(outcome.result.encode_to_vec())
                    .push_bind(&outcome.stdout)
                    .push_bind(&outcome.stderr)
                    .push_bind(outcome.started_at_ms)
                    .push_bind(outcome.finished_at_ms);
            });
            update.push(") AS v WHERE job_targets.job_id = v.column1 AND job_targets.host_id = v.column2");
            update.build().persistent(false).execute(&mut *tx).await?;
        }
        for end in ends {
            sqlx::query("UPDATE jobs SET state = ?, finished_at = ? WHERE id = ?")
                .bind(end.state as i32)
                .bind(end.finished_at_ms)
                .bind(job_id_sql(end.job_id))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records an approval decision on a pending job; returns false if it was not pending
    /// (decided already, or expired).
    pub async fn decide_job(
        &self,
        job_id: u64,
        state: v1::JobState,
        decided_by: &str,
        deadline_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query("UPDATE jobs SET state = ?, decided_by = ?, deadline = ? WHERE id = ? AND state = ?")
            .bind(state as i32)
            .bind(decided_by)
            .bind(deadline_ms)
            .bind(job_id_sql(job_id))
            .bind(v1::JobState::PendingApproval as i32)
            .execute(&self.writer)
            .await?
            .rows_affected()
            > 0)
    }

    /// Jobs in `state` (waiting for approval, or left running by a previous run), oldest first,
    /// with their targets.
    pub async fn jobs_in_state(&self, state: v1::JobState) -> Result<Vec<StoredJob>, StoreError> {
        let rows = sqlx::query("SELECT * FROM jobs WHERE state = ? ORDER BY id")
            .bind(state as i32)
            .fetch_all(&self.pool)
            .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = job_from_row(row)?.id;
            let Some((job, targets)) = self.job(id).await? else { continue };
            let reach: i32 = row.try_get("reach")?;
            jobs.push(StoredJob {
                job,
                targets,
                timeout_ms: u64::try_from(row.try_get::<i64, _>("timeout_ms")?).unwrap_or(0),
                output_cap: u64::try_from(row.try_get::<i64, _>("output_cap")?).unwrap_or(0),
                approval_expires_at_ms: row.try_get("approval_expires_at")?,
                queue_for_ms: u64::try_from(row.try_get::<i64, _>("queue_for_ms")?).unwrap_or(0),
                reach: v1::ReadReach::try_from(reach).unwrap_or(v1::ReadReach::Observe),
            });
        }
        Ok(jobs)
    }

    /// Records that `host_id`'s part of job `job_id` waits for the host, so that after a restart
    /// it is known never to have reached it.
    pub async fn mark_target_queued(&self, job_id: u64, host_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE job_targets SET state = ? WHERE job_id = ? AND host_id = ? AND state = ?")
            .bind(v1::TargetState::Queued as i32)
            .bind(job_id_sql(job_id))
            .bind(host_id)
            .bind(v1::TargetState::Pending as i32)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Whether `host_id`'s part of job `job_id` has its final result stored, or the job is not
    /// known at all: either way, an agent holding a result for it may forget it.
    pub async fn result_settled(&self, job_id: u64, host_id: &str) -> Result<bool, StoreError> {
        let state: Option<i32> =
            sqlx::query_scalar("SELECT state FROM job_targets WHERE job_id = ? AND host_id = ?")
                .bind(job_id_sql(job_id))
                .bind(host_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(state.is_none_or(|s| {
            !matches!(
                v1::TargetState::try_from(s),
                Ok(v1::TargetState::Pending | v1::TargetState::Running | v1::TargetState::Queued)
            )
        }))
    }

    /// The newest `limit` jobs; only those `requested_by` asked for, when it is given.
    pub async fn list_jobs(
        &self,
        limit: u32,
        requested_by: Option<&str>,
    ) -> Result<Vec<v1::Job>, StoreError> {
        let rows = match requested_by {
            None => {
                sqlx::query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?")
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(by) => {
                sqlx::query("SELECT * FROM jobs WHERE requested_by = ? ORDER BY id DESC LIMIT ?")
                    .bind(by)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut job = job_from_row(row)?;
            job.summary = Some(self.summary(job.id).await?);
            jobs.push(job);
        }
        Ok(jobs)
    }

    pub async fn job(&self, job_id: u64) -> Result<Option<(v1::Job, Vec<v1::TargetDetail>)>, StoreError> {
        let Some(row) = sqlx::query("SELECT * FROM jobs WHERE id = ?")
            .bind(job_id_sql(job_id))
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let mut job = job_from_row(&row)?;
        let rows = sqlx::query("SELECT * FROM job_targets WHERE job_id = ? ORDER BY host_name")
            .bind(job_id_sql(job_id))
            .fetch_all(&self.pool)
            .await?;
        let targets = rows.iter().map(target_from_row).collect::<Result<Vec<_>, _>>()?;
        job.summary = Some(summarize(targets.iter().map(|t| t.state())));
        Ok(Some((job, targets)))
    }

    async fn summary(&self, job_id: u64) -> Result<v1::JobSummary, StoreError> {
        let rows = sqlx::query("SELECT state FROM job_targets WHERE job_id = ?")
            .bind(job_id_sql(job_id))
            .fetch_all(&self.pool)
            .await?;
        let states = rows
            .iter()
            .map(|r| r.try_get::<i32, _>("state").map(|s| v1::TargetState::try_from(s).unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(summarize(states.into_iter()))
    }
}

/// Counts target states into a summary.
pub fn summarize(states: impl Iterator<Item = v1::TargetState>) -> v1::JobSummary {
    let mut s = v1::JobSummary::default();
    for state in states {
        s.total += 1;
        match state {
            v1::TargetState::Succeeded => s.succeeded += 1,
            v1::TargetState::Failed => s.failed += 1,
            v1::TargetState::TimedOut => s.timed_out += 1,
            v1::TargetState::Unreachable => s.unreachable += 1,
            v1::TargetState::Cancelled => s.cancelled += 1,
            v1::TargetState::Queued => s.queued += 1,
            v1::TargetState::Lost => s.lost += 1,
            v1::TargetState::Expired => s.expired += 1,
            v1::TargetState::Interrupted => s.interrupted += 1,
            v1::TargetState::Pending | v1::TargetState::Running | v1::TargetState::Unspecified => {}
        }
    }
    s
}

async fn insert_principal<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
    p: &NewPrincipal,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO principals (kind, name, role, scope, created_at) VALUES (?, ?, ?, ?, ?)")
        .bind(&p.kind)
        .bind(&p.name)
        .bind(&p.role)
        .bind(p.scope.as_ref().map(Message::encode_to_vec))
        .bind(now_ms)
        .execute(executor)
        .await?;
    Ok(())
}

fn principal_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<PrincipalRecord, StoreError> {
    let scope: Option<Vec<u8>> = row.try_get("scope")?;
    Ok(PrincipalRecord {
        principal: NewPrincipal {
            kind: row.try_get("kind")?,
            name: row.try_get("name")?,
            role: row.try_get("role")?,
            scope: scope.map(|s| decode("scope", &s)).transpose()?,
        },
        disabled: row.try_get("disabled")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

fn certificate_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<v1::CertificateRecord, StoreError> {
    Ok(v1::CertificateRecord {
        serial: row.try_get("serial")?,
        principal: row.try_get("principal")?,
        issued_at_ms: row.try_get("issued_at")?,
        not_after_ms: row.try_get("not_after")?,
        revoked_at_ms: row.try_get::<Option<i64>, _>("revoked_at")?.unwrap_or(0),
        revoked_reason: row.try_get::<Option<String>, _>("revoked_reason")?.unwrap_or_default(),
    })
}

async fn insert_certificate<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
    cert: &IssuedCertificate,
    principal_uri: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO certificates (serial, principal, issued_at, not_after) VALUES (?, ?, ?, ?)")
        .bind(&cert.serial)
        .bind(principal_uri)
        .bind(now_ms)
        .bind(cert.not_after_ms)
        .execute(executor)
        .await?;
    Ok(())
}

fn job_id_sql(job_id: u64) -> i64 {
    i64::try_from(job_id).unwrap_or(i64::MAX)
}

fn labels_to_json(labels: &Labels) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_owned())
}

fn labels_from_json(json: &str) -> Result<Labels, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("labels: {e}")))
}

fn decode<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn host_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<v1::Host, StoreError> {
    Ok(v1::Host {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        labels: labels_from_json(&row.try_get::<String, _>("labels")?)?,
        online: row.try_get("online")?,
        last_seen_ms: row.try_get("last_seen")?,
        agent_version: row.try_get("agent_version")?,
        os: row.try_get("os")?,
        arch: row.try_get("arch")?,
        hostname: row.try_get("hostname")?,
        kernel: row.try_get("kernel")?,
        enrolled_at_ms: row.try_get("enrolled_at")?,
        latest: None,
        health: None,
    })
}

fn job_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<v1::Job, StoreError> {
    let id: i64 = row.try_get("id")?;
    Ok(v1::Job {
        id: u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("job id {id}")))?,
        requested_by: row.try_get("requested_by")?,
        selector: Some(decode("selector", &row.try_get::<Vec<u8>, _>("selector")?)?),
        action: Some(decode("action", &row.try_get::<Vec<u8>, _>("action")?)?),
        created_at_ms: row.try_get("created_at")?,
        deadline_ms: row.try_get("deadline")?,
        state: row.try_get("state")?,
        finished_at_ms: row.try_get("finished_at")?,
        summary: None,
        concurrency: u32::try_from(row.try_get::<i64, _>("concurrency")?).unwrap_or(0),
        reason: row.try_get("reason")?,
        decided_by: row.try_get("decided_by")?,
        requested_via: row.try_get("requested_via")?,
        queue_until_ms: queue_until_ms(row)?,
    })
}

/// Until when a running job waits for offline hosts: its start plus the queue window, which is
/// its deadline less its timeout.
fn queue_until_ms(row: &sqlx::sqlite::SqliteRow) -> Result<i64, StoreError> {
    let (queue_for, deadline, timeout): (i64, i64, i64) =
        (row.try_get("queue_for_ms")?, row.try_get("deadline")?, row.try_get("timeout_ms")?);
    Ok(if queue_for > 0 && deadline > 0 { deadline.saturating_sub(timeout) } else { 0 })
}

fn target_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<v1::TargetDetail, StoreError> {
    let result: Option<Vec<u8>> = row.try_get("result")?;
    Ok(v1::TargetDetail {
        target: Some(v1::JobTarget {
            host_id: row.try_get("host_id")?,
            host_name: row.try_get("host_name")?,
        }),
        state: row.try_get("state")?,
        result: result.map(|r| decode("result", &r)).transpose()?,
        stdout: row.try_get("stdout")?,
        stderr: row.try_get("stderr")?,
        started_at_ms: row.try_get("started_at")?,
        finished_at_ms: row.try_get("finished_at")?,
    })
}

#[cfg(test)]
mod tests;
