//! The controller's data directory: what `init` creates and `serve` loads.
//!
//! ```text
//! DATA_DIR/ (0700)
//!   controller.toml        configuration
//!   ca.crt, ca.key         the internal CA (key 0600)
//!   server.crt, server.key TLS server certificate chain and key (key 0600)
//!   tailops.db             SQLite (WAL)
//!   admin.profile.toml     the first admin's tailopsctl profile (0600)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use tailops_pki::{CertificateAuthority, PrincipalId, PrincipalKind};
use tailopsctl::Profile;
use tokio::io::AsyncWriteExt;

use crate::config::ControllerConfig;
use crate::store::{NewPrincipal, Store};
use crate::{ControllerError, now_ms};

pub const CONFIG_FILE: &str = "controller.toml";
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
pub const DATABASE: &str = "tailops.db";
pub const ADMIN_PROFILE: &str = "admin.profile.toml";
/// The first admin's user name.
pub const FIRST_ADMIN: &str = "admin";

/// Paths inside one data directory.
#[derive(Debug, Clone)]
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub async fn is_initialized(&self) -> bool {
        tokio::fs::try_exists(self.file(CONFIG_FILE)).await.unwrap_or(false)
    }

    pub async fn load_config(&self) -> Result<ControllerConfig, ControllerError> {
        let path = self.file(CONFIG_FILE);
        let text = tokio::fs::read_to_string(&path).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ControllerError::NotInitialized(self.0.clone())
            } else {
                ControllerError::Io { path: path.clone(), source }
            }
        })?;
        toml::from_str(&text).map_err(|e| ControllerError::Config { path, message: e.to_string() })
    }

    pub async fn load_ca(&self, trust_domain: &str) -> Result<CertificateAuthority, ControllerError> {
        let cert = self.read(CA_CERT).await?;
        let key = self.read(CA_KEY).await?;
        Ok(CertificateAuthority::load(trust_domain, &cert, &key)?)
    }

    pub async fn read(&self, name: &str) -> Result<String, ControllerError> {
        let path = self.file(name);
        tokio::fs::read_to_string(&path).await.map_err(|source| ControllerError::Io { path, source })
    }

    /// Replaces a file atomically (a temporary file in the same directory, renamed over it), so
    /// a controller starting meanwhile reads the old or the new file, never half of one.
    /// `secret` files get mode 0600.
    async fn replace(&self, name: &str, contents: &str, secret: bool) -> Result<(), ControllerError> {
        let temp = format!(".{name}.new");
        let temp_path = self.file(&temp);
        // A leftover from an interrupted run would make `write_new` refuse.
        match tokio::fs::remove_file(&temp_path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ControllerError::Io { path: temp_path, source }),
        }
        self.write_new(&temp, contents, secret).await?;
        let path = self.file(name);
        tokio::fs::rename(&temp_path, &path).await.map_err(|source| ControllerError::Io { path, source })
    }

    /// Writes a new file; `secret` files get mode 0600. Never overwrites.
    async fn write_new(&self, name: &str, contents: &str, secret: bool) -> Result<(), ControllerError> {
        let path = self.file(name);
        let io_err = |source| ControllerError::Io { path: path.clone(), source };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&path)
            .await
            .map_err(io_err)?;
        file.write_all(contents.as_bytes()).await.map_err(io_err)?;
        file.sync_all().await.map_err(io_err)
    }
}

/// What `init` was asked for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub trust_domain: String,
    pub listen: std::net::SocketAddr,
    pub advertise: Vec<String>,
}

/// What `init` created.
#[derive(Debug, Clone)]
pub struct Initialized {
    pub config: ControllerConfig,
    pub admin_profile_path: PathBuf,
    pub admin_profile: Profile,
    pub ca_fingerprint: tailops_pki::Fingerprint,
}

/// Creates the data directory, CA, server certificate, database and first admin profile.
/// Refuses if the directory already holds a controller.
pub async fn initialize(dir: &DataDir, options: InitOptions) -> Result<Initialized, ControllerError> {
    if dir.is_initialized().await || tokio::fs::try_exists(dir.file(CA_KEY)).await.unwrap_or(false) {
        return Err(ControllerError::AlreadyInitialized(dir.path().to_owned()));
    }
    create_private_dir(dir.path()).await?;

    let mut advertise = options.advertise;
    if advertise.is_empty() {
        advertise = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    }
    let config = ControllerConfig {
        trust_domain: options.trust_domain,
        listen: options.listen,
        advertise,
        timing: Default::default(),
        limits: Default::default(),
        rate_limits: Default::default(),
        security: Default::default(),
        monitoring: Default::default(),
        prometheus: Default::default(),
        retention: Default::default(),
        network: Default::default(),
    };
    // Validate the trust domain before creating anything that depends on it.
    let admin = PrincipalId::new(&config.trust_domain, PrincipalKind::User, FIRST_ADMIN)?;

    let ca = CertificateAuthority::generate(&config.trust_domain)?;
    let (server, server_key) = ca.issue_server_certificate(
        &config.advertise,
        Duration::from_secs(config.timing.server_cert_lifetime_secs),
    )?;
    let (admin_cert, admin_key) =
        ca.issue_client_with_new_key(&admin, Duration::from_secs(config.timing.admin_cert_lifetime_secs))?;

    let config_text = toml::to_string_pretty(&config)
        .map_err(|e| ControllerError::Config { path: dir.file(CONFIG_FILE), message: e.to_string() })?;
    dir.write_new(CA_KEY, &ca.key_pem(), true).await?;
    dir.write_new(CA_CERT, ca.cert_pem(), false).await?;
    dir.write_new(SERVER_KEY, &server_key, true).await?;
    dir.write_new(SERVER_CERT, &server.pem, false).await?;

    let store = Store::open(&dir.file(DATABASE)).await?;
    let now = now_ms();
    let first_admin =
        NewPrincipal { kind: "user".into(), name: FIRST_ADMIN.into(), role: "admin".into(), scope: None };
    store.insert_principal(&first_admin, now).await?;
    store
        .record_certificate(
            &server,
            &PrincipalId::new(&config.trust_domain, PrincipalKind::Controller, "controller")?.uri(),
            now,
        )
        .await?;
    store.record_certificate(&admin_cert, &admin.uri(), now).await?;

    let admin_profile = Profile {
        endpoint: config.public_url(config.listen.port()),
        principal: admin.uri(),
        ca_pem: ca.cert_pem().to_owned(),
        cert_pem: admin_cert.pem,
        key_pem: admin_key,
    };
    let admin_profile_path = dir.file(ADMIN_PROFILE);
    admin_profile.save_new(&admin_profile_path).await?;
    // The config goes last: its presence is what marks the directory as initialized.
    dir.write_new(CONFIG_FILE, &config_text, false).await?;

    Ok(Initialized { config, admin_profile_path, admin_profile, ca_fingerprint: ca.fingerprint() })
}

/// What `rotate-server-cert` did.
#[derive(Debug, Clone)]
pub struct RotatedServerCertificate {
    pub serial: String,
    pub not_after_ms: i64,
    /// The names and addresses in the new certificate.
    pub advertise: Vec<String>,
}

/// Issues a new server key and certificate from the CA and replaces `server.crt`/`server.key`,
/// so the fleet keeps trusting the controller past the old certificate's end (clients pin the
/// CA, not the server certificate). `advertise`, when given, replaces the configured names
/// (and is saved in `controller.toml`); otherwise the configured ones are kept. A running
/// controller serves the new certificate from its next start.
pub async fn rotate_server_certificate(
    dir: &DataDir,
    advertise: Option<Vec<String>>,
) -> Result<RotatedServerCertificate, ControllerError> {
    let mut config = dir.load_config().await?;
    let ca = dir.load_ca(&config.trust_domain).await?;
    let changed_names = match advertise {
        Some(names) if !names.is_empty() && names != config.advertise => {
            config.advertise = names;
            true
        }
        _ => false,
    };
    let (server, server_key) = ca.issue_server_certificate(
        &config.advertise,
        Duration::from_secs(config.timing.server_cert_lifetime_secs),
    )?;
    let store = Store::open(&dir.file(DATABASE)).await?;
    store
        .record_certificate(
            &server,
            &PrincipalId::new(&config.trust_domain, PrincipalKind::Controller, "controller")?.uri(),
            now_ms(),
        )
        .await?;
    // Each file is replaced atomically; the pair is consistent once both renames are done,
    // which is why the controller picks it up at its next start, not while this runs.
    dir.replace(SERVER_KEY, &server_key, true).await?;
    dir.replace(SERVER_CERT, &server.pem, false).await?;
    if changed_names {
        let text = toml::to_string_pretty(&config)
            .map_err(|e| ControllerError::Config { path: dir.file(CONFIG_FILE), message: e.to_string() })?;
        dir.replace(CONFIG_FILE, &text, false).await?;
    }
    Ok(RotatedServerCertificate {
        serial: server.serial,
        not_after_ms: server.not_after_ms,
        advertise: config.advertise,
    })
}

async fn create_private_dir(path: &Path) -> Result<(), ControllerError> {
    use std::os::unix::fs::PermissionsExt;
    let io_err = |source| ControllerError::Io { path: path.to_owned(), source };
    tokio::fs::create_dir_all(path).await.map_err(io_err)?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).await.map_err(io_err)
}
