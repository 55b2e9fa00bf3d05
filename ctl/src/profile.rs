//! A profile is one file holding everything needed to talk to a controller as one principal:
//! endpoint, CA certificate, client certificate and private key. It is written 0600.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming the profile file when `--profile` is not given.
pub const PROFILE_ENV: &str = "TAILOPS_PROFILE";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "no profile found at {0}; pass --profile PATH, set {PROFILE_ENV}, or create one with \
         `tailops-controller init` (which prints its path)"
    )]
    Missing(PathBuf),
    #[error("cannot read profile {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("profile {path} is not valid: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("cannot write profile {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("profile {0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("cannot find a home directory for the default profile; pass --profile PATH")]
    NoHome,
    #[error(
        "profile {path} holds a private key but others may read it (mode {mode:04o}); \
         run `chmod 600 {path}` and consider the key exposed if others could read it"
    )]
    Exposed { path: PathBuf, mode: u32 },
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Profile {
    /// `https://HOST:PORT` of the controller.
    pub endpoint: String,
    /// The principal this profile authenticates as (informational; the certificate decides).
    #[serde(default)]
    pub principal: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches logs or error output.
        f.debug_struct("Profile")
            .field("endpoint", &self.endpoint)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Profile {
    /// The profile path to use: `explicit`, else `$TAILOPS_PROFILE`, else
    /// `$XDG_CONFIG_HOME/tailops/profile.toml` (or `~/.config/tailops/profile.toml`).
    pub fn resolve_path(explicit: Option<&Path>) -> Result<PathBuf, ProfileError> {
        if let Some(path) = explicit {
            return Ok(path.to_owned());
        }
        if let Some(path) = std::env::var_os(PROFILE_ENV).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        let config_dir = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME").ok_or(ProfileError::NoHome)?).join(".config"),
        };
        Ok(config_dir.join("tailops").join("profile.toml"))
    }

    pub async fn load(path: &Path) -> Result<Self, ProfileError> {
        use std::os::unix::fs::PermissionsExt;
        // As ssh does with keys: a profile others can read is refused, not silently used.
        if let Ok(meta) = tokio::fs::metadata(path).await
            && meta.permissions().mode() & 0o077 != 0
        {
            return Err(ProfileError::Exposed {
                path: path.to_owned(),
                mode: meta.permissions().mode() & 0o777,
            });
        }
        let text = tokio::fs::read_to_string(path).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ProfileError::Missing(path.to_owned())
            } else {
                ProfileError::Read { path: path.to_owned(), source }
            }
        })?;
        toml::from_str(&text).map_err(|source| ProfileError::Parse { path: path.to_owned(), source })
    }

    /// Replaces the profile file atomically (temporary file, then rename), keeping mode 0600.
    pub async fn save_replacing(&self, path: &Path) -> Result<(), ProfileError> {
        let tmp = path.with_extension("toml.tmp");
        let _ = tokio::fs::remove_file(&tmp).await;
        self.save_new(&tmp).await?;
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(|source| ProfileError::Write { path: path.to_owned(), source })
    }

    /// Writes the profile with mode 0600, refusing to replace an existing file.
    pub async fn save_new(&self, path: &Path) -> Result<(), ProfileError> {
        use tokio::io::AsyncWriteExt;
        let write_err = |source| ProfileError::Write { path: path.to_owned(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(write_err)?;
        }
        let text = toml::to_string_pretty(self).map_err(|e| write_err(std::io::Error::other(e)))?;
        let mut file =
            tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).await.map_err(
                |source| {
                    if source.kind() == std::io::ErrorKind::AlreadyExists {
                        ProfileError::Exists(path.to_owned())
                    } else {
                        write_err(source)
                    }
                },
            )?;
        file.write_all(text.as_bytes()).await.map_err(write_err)?;
        file.sync_all().await.map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn a_profile_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        let profile = Profile {
            endpoint: "https://127.0.0.1:1".into(),
            principal: "spiffe://t/user/admin".into(),
            ca_pem: String::new(),
            cert_pem: String::new(),
            key_pem: "-----BEGIN PRIVATE KEY-----".into(),
        };
        profile.save_new(&path).await.expect("save");
        Profile::load(&path).await.expect("0600 loads");
        tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).await.expect("chmod");
        let err = Profile::load(&path).await.expect_err("world-readable");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
