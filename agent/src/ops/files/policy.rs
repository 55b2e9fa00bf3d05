//! What file operations may touch: an allowlist of roots per reach, and a deny list that wins
//! at every reach. Both are decided on the path as asked for (normalised lexically, no
//! filesystem access), so a refusal reads the same whether the path exists or not; the path is
//! then opened beneath its root without following symlinks ([`super::open`]), so what was
//! checked is what is read.

use std::path::{Component, Path, PathBuf};

/// Path prefixes (whole components) that are never readable.
const DENIED_PATHS: &[&str] = &[
    "/root",
    "/etc/ssh",
    "/etc/tailops",
    // WireGuard configurations hold private keys; TLS private keys live here too.
    "/etc/wireguard",
    "/etc/ssl/private",
    "/etc/security/opasswd",
    "/etc/pve/priv",
    "/etc/NetworkManager/system-connections",
    "/etc/kubernetes/admin.conf",
    "/etc/kubernetes/pki",
    "/etc/rancher",
    "/var/lib/rancher/k3s/server",
    "/etc/mysql/debian.cnf",
    "/etc/postfix/sasl_passwd",
    "/etc/ipsec.secrets",
    "/etc/gitlab-runner",
    "/etc/gitlab/gitlab-secrets.json",
    // Container data (databases, application secrets) belongs to the containers.
    "/var/lib/docker/volumes",
    "/var/lib/containers/storage/volumes",
    "/run/secrets",
    "/proc",
    "/sys",
];
/// Directories under `/var/lib` whose name starts with this hold TailOps state (the agent's
/// key, a controller's CA and database).
const TAILOPS_STATE_PREFIX: &str = "tailops";
/// Directory names that hold credentials wherever they are.
const DENIED_DIRS: &[&str] = &[
    ".ssh",
    ".aws",
    ".azure",
    "gcloud",
    ".gnupg",
    ".kube",
    ".docker",
    ".password-store",
    "sudoers.d",
    "system-connections",
    ".tailops",
    ".tailops-dev",
];
/// Directory pairs (parent, child) that hold credentials: `~/.config/gh`, `~/.config/tailops`.
const DENIED_SUBDIRS: &[(&str, &str)] = &[(".config", "gh"), (".config", "tailops"), (".config", "rclone")];
/// File names denied anywhere, also with a variant suffix (`shadow-`, `shadow.bak`, `shadow~`).
const DENIED_NAMES: &[&str] = &[
    "shadow",
    "gshadow",
    "opasswd",
    "authorized_keys",
    ".netrc",
    ".pgpass",
    ".git-credentials",
    ".vault-token",
    ".htpasswd",
    ".env",
    "k3s.yaml",
    "rclone.conf",
    "tailops.db",
    "fish_history",
    ".zhistory",
    ".histfile",
];
/// File name prefixes denied anywhere.
const DENIED_PREFIXES: &[&str] = &["sudoers", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", ".env."];
/// File name suffixes denied anywhere (`prod.env`, `admin.profile.toml`).
const DENIED_SUFFIXES: &[&str] = &[".env", ".profile.toml"];
/// Extensions of key material, also before another one (`agent.key.new`, `tls.pem.bak`).
const DENIED_EXTENSIONS: &[&str] = &["pem", "key", "p12", "pfx", "kdbx", "keytab", "ppk", "jks", "keystore"];

/// Why `path` (absolute, normalised) is denied, if it is; `extra` are the agent's own denied
/// paths (its state directory, `--files-deny`). `Path::starts_with` compares whole components.
pub(crate) fn denied(path: &Path, extra: &[PathBuf]) -> Option<&'static str> {
    if DENIED_PATHS.iter().map(Path::new).any(|d| path.starts_with(d)) {
        return Some("a credential store");
    }
    if extra.iter().any(|d| path.starts_with(d)) {
        return Some("denied by this agent's configuration");
    }
    if let Ok(rest) = path.strip_prefix("/var/lib")
        && rest
            .components()
            .next()
            .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with(TAILOPS_STATE_PREFIX))
    {
        return Some("TailOps state");
    }
    let names: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if names.iter().any(|n| DENIED_DIRS.contains(&n.as_str())) {
        return Some("a credential directory");
    }
    if names.windows(2).any(|w| DENIED_SUBDIRS.contains(&(w[0].as_str(), w[1].as_str()))) {
        return Some("a credential directory");
    }
    let name = names.last()?;
    let lower = name.to_ascii_lowercase();
    let variant_of = |base: &str| {
        name == base
            || name.strip_prefix(base).is_some_and(|rest| rest.starts_with(['-', '.', '~', '_', '+', ',']))
    };
    if DENIED_NAMES.iter().any(|n| variant_of(n))
        || DENIED_PREFIXES.iter().any(|p| name.starts_with(p))
        || DENIED_SUFFIXES.iter().any(|s| lower.ends_with(s))
        || (name.starts_with('.') && name.ends_with("_history"))
        || lower.contains("kubeconfig")
    {
        return Some("a credential file");
    }
    if lower.split('.').skip(1).any(|ext| DENIED_EXTENSIONS.contains(&ext)) {
        return Some("key material");
    }
    // A controller's data directory anywhere (`/srv/tailops/controller.toml`).
    let in_tailops_dir = names.len() >= 2 && {
        let parent = names[names.len() - 2].trim_start_matches('.');
        parent.starts_with("tailops")
    };
    if in_tailops_dir && lower.ends_with(".toml") {
        return Some("TailOps configuration");
    }
    None
}

/// `requested` (absolute) with `.` and `..` resolved by name, without looking at the
/// filesystem: the path that will be opened, component by component, never through a symlink.
pub(crate) fn normalise(requested: &str) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for component in Path::new(requested).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::Prefix(_) => return None,
        }
    }
    requested.starts_with('/').then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_denied(p: &str) -> bool {
        denied(Path::new(p), &[]).is_some()
    }

    #[test]
    fn the_deny_list_compares_components_and_covers_credentials() {
        for p in [
            "/etc/shadow",
            "/etc/shadow-",
            "/etc/gshadow-",
            "/var/backups/shadow.bak",
            "/etc/security/opasswd",
            "/etc/krb5.keytab",
            "/etc/kubernetes/admin.conf",
            "/etc/rancher/k3s/k3s.yaml",
            "/home/al/k3s.yaml",
            "/home/al/.kube/config",
            "/srv/ci/kubeconfig-prod.yaml",
            "/etc/NetworkManager/system-connections/home.nmconnection",
            "/srv/app/.env",
            "/opt/app/prod.env",
            "/opt/app/.env.local",
            "/home/al/.bash_history",
            "/home/al/.zsh_history",
            "/home/al/.aws/credentials",
            "/home/al/.config/gh/hosts.yml",
            "/home/al/.config/rclone/rclone.conf",
            "/home/al/gcloud/key.json",
            "/etc/pve/priv/token.cfg",
            "/var/lib/docker/volumes/db/_data/base/1",
            "/var/lib/tailops-agent/agent.toml",
            "/var/lib/tailops/tailops.db",
            "/etc/tailops/controller.toml",
            "/home/al/src/app/.tailops-dev/tailops.db",
            "/home/al/.config/tailops/profile.toml",
            "/home/al/admin.profile.toml",
            "/srv/tailops/controller.toml",
            "/srv/data/tailops.db-wal",
            "/var/lib/agent/agent.key.new",
            "/etc/sudoers.d/admins",
            "/etc/sudoers",
            "/root/notes.txt",
            "/home/al/.ssh/config",
            "/srv/tls/server.KEY",
            "/etc/wireguard/wg0.conf",
            "/home/al/keys/me.ppk",
            "/proc/1/environ",
        ] {
            assert!(is_denied(p), "{p} should be denied");
        }
        for p in [
            "/var/log/syslog",
            "/rootfs/notes.txt",
            "/etc/hostname",
            "/var/log/shadowsocks.log",
            "/var/log/tailops/agent.log",
            "/srv/app/environment.txt",
            "/var/log/monkey.log",
            "/home/al/.config/htop/htoprc",
            "/var/lib/docker/containers/x/x-json.log",
        ] {
            assert!(!is_denied(p), "{p} should be allowed");
        }
        let extra = [PathBuf::from("/srv/agent-state")];
        assert!(denied(Path::new("/srv/agent-state/agent.crt"), &extra).is_some());
        assert!(denied(Path::new("/srv/agent-stateX/agent.crt"), &extra).is_none());
    }

    #[test]
    fn paths_normalise_by_name() {
        assert_eq!(normalise("/var/log/../log/./syslog"), Some(PathBuf::from("/var/log/syslog")));
        assert_eq!(normalise("/var/log/../../../etc/shadow"), Some(PathBuf::from("/etc/shadow")));
        assert_eq!(normalise("//var//log/"), Some(PathBuf::from("/var/log")));
        assert_eq!(normalise("var/log"), None);
    }
}
