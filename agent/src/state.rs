//! The agent's state directory:
//!
//! ```text
//! STATE_DIR/ (0700)
//!   agent.toml   controller URL, host id and name
//!   ca.crt       the controller CA, pinned at enrollment
//!   agent.crt    this host's certificate (renewed over the link)
//!   agent.key    this host's private key (0600, generated here, never sent anywhere)
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::AgentError;

const CONFIG: &str = "agent.toml";
const CA_CERT: &str = "ca.crt";
const CERT: &str = "agent.crt";
const KEY: &str = "agent.key";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub controller_url: String,
    pub host_id: String,
    pub name: String,
}

/// An enrolled agent's state, loaded from its directory.
#[derive(Clone)]
pub struct AgentState {
    pub dir: PathBuf,
    pub config: AgentConfig,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AgentState {
    pub async fn load(dir: &Path) -> Result<Self, AgentError> {
        let config_path = dir.join(CONFIG);
        let text = match tokio::fs::read_to_string(&config_path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AgentError::NotEnrolled(dir.to_owned()));
            }
            Err(source) => {
                return Err(AgentError::Io { path: config_path, source });
            }
        };
        let config = toml::from_str(&text)
            .map_err(|e| AgentError::BadState { path: config_path, message: e.to_string() })?;
        Ok(Self {
            dir: dir.to_owned(),
            config,
            ca_pem: read(&dir.join(CA_CERT)).await?,
            cert_pem: read(&dir.join(CERT)).await?,
            key_pem: read(&dir.join(KEY)).await?,
        })
    }

    /// The name of the agent enrolled in `dir`, if any.
    pub async fn enrolled_name(dir: &Path) -> Option<String> {
        let text = tokio::fs::read_to_string(dir.join(CONFIG)).await.ok()?;
        toml::from_str::<AgentConfig>(&text).ok().map(|c| c.name)
    }

    /// Writes a freshly enrolled state. The config goes last: it marks the directory enrolled.
    pub async fn save_new(&self) -> Result<(), AgentError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AgentError::Io { path, source }
        };
        tokio::fs::create_dir_all(&self.dir).await.map_err(io(&self.dir))?;
        tokio::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(io(&self.dir))?;
        write_atomic(&self.dir.join(KEY), &self.key_pem, 0o600).await?;
        write_atomic(&self.dir.join(CERT), &self.cert_pem, 0o644).await?;
        write_atomic(&self.dir.join(CA_CERT), &self.ca_pem, 0o644).await?;
        let config = toml::to_string_pretty(&self.config)
            .map_err(|e| AgentError::BadState { path: self.dir.join(CONFIG), message: e.to_string() })?;
        write_atomic(&self.dir.join(CONFIG), &config, 0o644).await
    }

    /// Replaces key and certificate after a renewal (key first: a crash in between leaves a
    /// mismatched pair, which the next start detects by the failing handshake; see `link`).
    pub async fn save_renewed(&mut self, key_pem: String, cert_pem: String) -> Result<(), AgentError> {
        write_atomic(&self.dir.join(KEY), &key_pem, 0o600).await?;
        write_atomic(&self.dir.join(CERT), &cert_pem, 0o644).await?;
        self.key_pem = key_pem;
        self.cert_pem = cert_pem;
        Ok(())
    }
}

async fn read(path: &Path) -> Result<String, AgentError> {
    tokio::fs::read_to_string(path).await.map_err(|source| AgentError::Io { path: path.to_owned(), source })
}

/// Writes through a temporary file and a rename, so readers never see a half-written file.
async fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), AgentError> {
    let io = |source| AgentError::Io { path: path.to_owned(), source };
    let tmp = path.with_extension("tmp");
    let _ = tokio::fs::remove_file(&tmp).await;
    let mut file =
        tokio::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).await.map_err(io)?;
    file.write_all(contents.as_bytes()).await.map_err(io)?;
    file.sync_all().await.map_err(io)?;
    tokio::fs::rename(&tmp, path).await.map_err(io)
}
