//! Identity of the system: `hostname`, `arch`, `kernel`, `os.*` (from os-release) and
//! `agent.version`.

use std::path::Path;

use super::{Facts, insert, read_text, read_value};

pub(super) async fn collect(root: &Path) -> Facts {
    let mut facts = Facts::new();
    insert(&mut facts, "agent.version", env!("CARGO_PKG_VERSION"));
    insert(&mut facts, "arch", std::env::consts::ARCH);
    // The kernel's own files rather than syscalls, so a fixture root can stand in for them.
    if let Some(hostname) = read_value(root, "/proc/sys/kernel/hostname").await {
        insert(&mut facts, "hostname", hostname);
    }
    if let Some(kernel) = read_value(root, "/proc/sys/kernel/osrelease").await {
        insert(&mut facts, "kernel", kernel);
    }
    // os-release(5): /etc/os-release, or the vendor copy when /etc has none.
    let release = match read_text(root, "/etc/os-release").await {
        Some(text) => Some(text),
        None => read_text(root, "/usr/lib/os-release").await,
    };
    if let Some(release) = release {
        for (field, key) in
            [("NAME", "os.name"), ("VERSION_ID", "os.version"), ("PRETTY_NAME", "os.pretty"), ("ID", "os.id")]
        {
            if let Some(value) = os_release_field(&release, field) {
                insert(&mut facts, key, value);
            }
        }
    }
    facts
}

/// The value of `field` in os-release text: `KEY=value` lines, values optionally in single or
/// double quotes, with shell-style backslash escapes inside double quotes.
fn os_release_field(text: &str, field: &str) -> Option<String> {
    let raw = text.lines().find_map(|line| line.trim().strip_prefix(field)?.strip_prefix('='))?;
    let value = if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match (c, chars.clone().next()) {
                ('\\', Some(next @ ('"' | '\\' | '$' | '`'))) => {
                    out.push(next);
                    chars.next();
                }
                _ => out.push(c),
            }
        }
        out
    } else if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        inner.to_owned()
    } else {
        raw.to_owned()
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testutil::fixture_root;

    const DEBIAN: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"#;

    #[tokio::test]
    async fn reads_identity_from_the_root() {
        let root = fixture_root(&[
            ("/etc/os-release", DEBIAN),
            ("/proc/sys/kernel/hostname", "pve-node1\n"),
            ("/proc/sys/kernel/osrelease", "6.8.12-4-pve\n"),
        ])
        .await;
        let facts = collect(root.path()).await;
        assert_eq!(facts["hostname"], "pve-node1");
        assert_eq!(facts["kernel"], "6.8.12-4-pve");
        assert_eq!(facts["os.name"], "Debian GNU/Linux");
        assert_eq!(facts["os.version"], "12");
        assert_eq!(facts["os.pretty"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(facts["os.id"], "debian");
        assert_eq!(facts["arch"], std::env::consts::ARCH);
        assert_eq!(facts["agent.version"], env!("CARGO_PKG_VERSION"));
    }

    #[tokio::test]
    async fn falls_back_to_the_vendor_os_release_and_omits_what_is_missing() {
        let root =
            fixture_root(&[("/usr/lib/os-release", "NAME='Arch Linux'\nID=arch\nBUILD_ID=rolling\n")]).await;
        let facts = collect(root.path()).await;
        assert_eq!(facts["os.name"], "Arch Linux");
        assert_eq!(facts["os.id"], "arch");
        for absent in ["os.version", "os.pretty", "hostname", "kernel"] {
            assert!(!facts.contains_key(absent), "{absent}");
        }
    }

    #[test]
    fn os_release_quoting() {
        let text = "NAME=\"A \\\"quoted\\\" \\$name\"\nID_LIKE=debian\nID=x\n";
        assert_eq!(os_release_field(text, "NAME").as_deref(), Some("A \"quoted\" $name"));
        // ID must not match ID_LIKE.
        assert_eq!(os_release_field(text, "ID").as_deref(), Some("x"));
        assert_eq!(os_release_field(text, "VERSION_ID"), None);
    }
}
