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
const NEW_CERT: &str = "agent.crt.new";
const NEW_KEY: &str = "agent.key.new";

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
        Self::finish_interrupted_renewal(dir).await?;
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

    /// Replaces key and certificate after a renewal as a pair: both are written beside the old
    /// ones first, then renamed in a fixed order that [`Self::finish_interrupted_renewal`] can
    /// complete after a crash, so the key and certificate on disk always match.
    pub async fn save_renewed(&mut self, key_pem: String, cert_pem: String) -> Result<(), AgentError> {
        write_atomic(&self.dir.join(NEW_KEY), &key_pem, 0o600).await?;
        write_atomic(&self.dir.join(NEW_CERT), &cert_pem, 0o644).await?;
        rename(&self.dir.join(NEW_KEY), &self.dir.join(KEY)).await?;
        rename(&self.dir.join(NEW_CERT), &self.dir.join(CERT)).await?;
        self.key_pem = key_pem;
        self.cert_pem = cert_pem;
        Ok(())
    }

    /// Completes or discards a renewal a crash interrupted (see [`Self::save_renewed`]).
    async fn finish_interrupted_renewal(dir: &Path) -> Result<(), AgentError> {
        let exists = |name| tokio::fs::try_exists(dir.join(name));
        match (exists(NEW_KEY).await.unwrap_or(false), exists(NEW_CERT).await.unwrap_or(false)) {
            // Both new files complete: finish the swap.
            (true, true) => {
                rename(&dir.join(NEW_KEY), &dir.join(KEY)).await?;
                rename(&dir.join(NEW_CERT), &dir.join(CERT)).await
            }
            // The key was swapped, the certificate not yet.
            (false, true) => rename(&dir.join(NEW_CERT), &dir.join(CERT)).await,
            // The new certificate was never written: keep the old pair.
            (true, false) => tokio::fs::remove_file(dir.join(NEW_KEY))
                .await
                .map_err(|source| AgentError::Io { path: dir.join(NEW_KEY), source }),
            (false, false) => Ok(()),
        }
    }
}

async fn read(path: &Path) -> Result<String, AgentError> {
    tokio::fs::read_to_string(path).await.map_err(|source| AgentError::Io { path: path.to_owned(), source })
}

async fn rename(from: &Path, to: &Path) -> Result<(), AgentError> {
    tokio::fs::rename(from, to).await.map_err(|source| AgentError::Io { path: to.to_owned(), source })
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn state_in(dir: &Path) -> AgentState {
        let state = AgentState {
            dir: dir.to_owned(),
            config: AgentConfig {
                controller_url: "https://c:1".into(),
                host_id: "h".into(),
                name: "n".into(),
            },
            ca_pem: "ca".into(),
            cert_pem: "old cert".into(),
            key_pem: "old key".into(),
        };
        state.save_new().await.expect("save");
        state
    }

    #[tokio::test]
    async fn an_interrupted_renewal_is_completed_or_discarded_as_a_pair() {
        let dir = tempfile::tempdir().expect("dir");
        state_in(dir.path()).await;
        // Crashed after writing both new files: the swap is completed.
        write_atomic(&dir.path().join(NEW_KEY), "new key", 0o600).await.expect("key");
        write_atomic(&dir.path().join(NEW_CERT), "new cert", 0o644).await.expect("cert");
        let loaded = AgentState::load(dir.path()).await.expect("load");
        assert_eq!((loaded.key_pem.as_str(), loaded.cert_pem.as_str()), ("new key", "new cert"));

        // Crashed after the key was written but before the certificate: the old pair stays.
        write_atomic(&dir.path().join(NEW_KEY), "newer key", 0o600).await.expect("key");
        let loaded = AgentState::load(dir.path()).await.expect("load");
        assert_eq!((loaded.key_pem.as_str(), loaded.cert_pem.as_str()), ("new key", "new cert"));

        // Crashed between the two renames: the certificate follows the key.
        write_atomic(&dir.path().join(KEY), "newest key", 0o600).await.expect("key");
        write_atomic(&dir.path().join(NEW_CERT), "newest cert", 0o644).await.expect("cert");
        let loaded = AgentState::load(dir.path()).await.expect("load");
        assert_eq!((loaded.key_pem.as_str(), loaded.cert_pem.as_str()), ("newest key", "newest cert"));
    }
}
