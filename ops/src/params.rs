//! Parameter kinds. Every value that reaches an external program's argv passes one of these
//! first; none may start with `-` (it would be read as an option) or hold control characters.

use std::net::IpAddr;
use std::time::Duration;

/// What a parameter holds, and so how it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A systemd unit name (`nginx`, `nginx.service`, `getty@tty1.service`).
    Unit,
    /// A container name or id.
    Container,
    /// An absolute filesystem path (policy checks such as allowed roots come later, on the
    /// host, against the path as written, which is opened without following symlinks).
    Path,
    /// A file-name pattern with `*`, `?` and `[...]`, without `/`.
    Glob,
    /// A DNS name or an IP address.
    Host,
    /// A TCP or UDP port, 1-65535.
    Port,
    /// An `http://` or `https://` URL without credentials.
    Url,
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    Choice(&'static [&'static str]),
    /// `30s`, `5m`, `2h`... at most `max_secs`.
    Duration {
        max_secs: u64,
    },
    /// Free text of printable characters, at most `max` bytes.
    Text {
        max: usize,
    },
    /// Comma-separated Debian/RPM package names (`nginx,libc6:amd64`), at most
    /// [`MAX_PACKAGES`]; each `[a-z0-9][a-z0-9+.-_:]*`, so none can be an option.
    Packages,
    /// A container image reference (`nginx:1.27`, `ghcr.io/org/app@sha256:...`); scanner
    /// source schemes (`dir:`, `docker-archive:`...) are refused, so it can only name an image.
    Image,
    /// A Compose project name: lowercase letters, digits, `-` and `_`.
    Project,
    /// A snapshot name: a letter, then letters, digits, `-` or `_`; at most 40 characters
    /// (Proxmox's rule).
    SnapshotName,
}

/// A checked parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
    Duration(Duration),
    List(Vec<String>),
}

const MAX_NAME: usize = 255;
const MAX_PATH: usize = 4096;
/// Groups of `*` a file-name pattern may hold (see [`ParamKind::Glob`]).
pub const MAX_GLOB_STARS: usize = 16;
/// How many names one `Packages` value may hold.
pub const MAX_PACKAGES: usize = 100;
/// Prefixes Trivy and Grype read as "not a registry image"; an image reference may not use them.
const SCANNER_SCHEMES: &[&str] = &[
    "dir",
    "file",
    "docker",
    "podman",
    "containerd",
    "docker-archive",
    "oci-archive",
    "oci-dir",
    "singularity",
    "registry",
    "sbom",
];

impl ParamKind {
    /// A short description for help texts and tool schemas.
    pub fn describe(&self) -> String {
        match self {
            Self::Unit => "systemd unit name".into(),
            Self::Container => "container name or id".into(),
            Self::Path => "absolute path".into(),
            Self::Glob => format!("file name pattern (* ? [...]; at most {MAX_GLOB_STARS} groups of *)"),
            Self::Host => "DNS name or IP address".into(),
            Self::Port => "port 1-65535".into(),
            Self::Url => "http(s) URL".into(),
            Self::Int { min, max } => format!("integer {min}-{max}"),
            Self::Bool => "true or false".into(),
            Self::Choice(options) => format!("one of {}", options.join(", ")),
            Self::Duration { max_secs } => {
                format!(
                    "duration such as 30s or 5m, at most {}",
                    humantime::format_duration(Duration::from_secs(*max_secs))
                )
            }
            Self::Text { max } => format!("text, at most {max} bytes"),
            Self::Packages => format!("comma-separated package names, at most {MAX_PACKAGES}"),
            Self::Image => "container image reference (name[:tag][@digest])".into(),
            Self::SnapshotName => "snapshot name (letter, then letters, digits, - or _)".into(),
            Self::Project => "Compose project name".into(),
        }
    }

    /// Checks and converts `raw`; the error says what was expected.
    pub fn parse(&self, raw: &str) -> Result<Value, String> {
        if raw.chars().any(char::is_control) {
            return Err("control characters are not allowed".into());
        }
        let text = || Value::Text(raw.to_owned());
        match self {
            Self::Unit => {
                name_like(raw, MAX_NAME, |c| c.is_ascii_alphanumeric() || ":_.@-\\".contains(c))?;
                if is_power_unit(raw) {
                    return Err(format!(
                        "{raw:?} changes the machine's power state or isolates it; it is not a service. \
                         Reboots and shutdowns need an explicit exec with approval"
                    ));
                }
                Ok(text())
            }
            Self::Container => {
                name_like(raw, 128, |c| c.is_ascii_alphanumeric() || "_.-".contains(c))?;
                Ok(text())
            }
            Self::Path => {
                if !raw.starts_with('/') {
                    return Err(format!("{raw:?} is not an absolute path"));
                }
                if raw.len() > MAX_PATH {
                    return Err(format!("longer than {MAX_PATH} bytes"));
                }
                Ok(text())
            }
            Self::Glob => {
                name_like(raw, MAX_NAME, |c| c != '/' && c != '\0')?;
                // Each group of `*` is a point the matcher may restart from; bounding them keeps
                // a match cheap on the host (a run like `***` counts once).
                let stars = raw.split(|c| c != '*').filter(|run| !run.is_empty()).count();
                if stars > MAX_GLOB_STARS {
                    return Err(format!(
                        "{stars} groups of '*' in the pattern; at most {MAX_GLOB_STARS} are allowed: \
                         merge them or search more broadly and narrow down the results"
                    ));
                }
                Ok(text())
            }
            Self::Host => host(raw).map(|()| text()),
            Self::Port => match raw.parse::<u16>() {
                Ok(p) if p > 0 => Ok(Value::Int(i64::from(p))),
                _ => Err(format!("{raw:?} is not a port (1-65535)")),
            },
            Self::Url => url(raw).map(|()| text()),
            Self::Int { min, max } => match raw.parse::<i64>() {
                Ok(n) if (*min..=*max).contains(&n) => Ok(Value::Int(n)),
                _ => Err(format!("{raw:?} is not an integer from {min} to {max}")),
            },
            Self::Bool => match raw {
                "true" | "yes" | "1" | "on" => Ok(Value::Bool(true)),
                "false" | "no" | "0" | "off" => Ok(Value::Bool(false)),
                _ => Err(format!("{raw:?} is not true or false")),
            },
            Self::Choice(options) => {
                if options.contains(&raw) {
                    Ok(text())
                } else {
                    Err(format!("{raw:?} is not one of {}", options.join(", ")))
                }
            }
            Self::Duration { max_secs } => {
                let d = humantime::parse_duration(raw)
                    .map_err(|e| format!("{raw:?}: {e} (use e.g. 30s, 5m, 2h)"))?;
                if d > Duration::from_secs(*max_secs) {
                    return Err(format!(
                        "{raw} is longer than {}",
                        humantime::format_duration(Duration::from_secs(*max_secs))
                    ));
                }
                Ok(Value::Duration(d))
            }
            Self::Text { max } => {
                if raw.len() > *max {
                    return Err(format!("longer than {max} bytes"));
                }
                Ok(text())
            }
            Self::Project => {
                name_like(raw, 128, |c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                })?;
                Ok(text())
            }
            Self::SnapshotName => {
                name_like(raw, 40, |c| c.is_ascii_alphanumeric() || c == '-' || c == '_')?;
                if !raw.starts_with(|c: char| c.is_ascii_alphabetic()) {
                    return Err(format!("{raw:?} must start with a letter"));
                }
                Ok(text())
            }
            Self::Packages => packages(raw),
            Self::Image => image(raw).map(|()| text()),
        }
    }
}

fn packages(raw: &str) -> Result<Value, String> {
    let names: Vec<&str> = raw.split(',').map(str::trim).collect();
    if names.len() > MAX_PACKAGES {
        return Err(format!("{} names; at most {MAX_PACKAGES}", names.len()));
    }
    for name in &names {
        name_like(name, MAX_NAME, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-_:".contains(c))?;
        if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return Err(format!("{name:?} must start with a lowercase letter or digit"));
        }
    }
    Ok(Value::List(names.into_iter().map(str::to_owned).collect()))
}

fn image(raw: &str) -> Result<(), String> {
    name_like(raw, MAX_NAME, |c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))?;
    if !raw.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{raw:?} must start with a letter or digit"));
    }
    if let Some((scheme, _)) = raw.split_once(':')
        && SCANNER_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str())
    {
        return Err(format!("{raw:?}: the {scheme}: source scheme is not accepted, only an image reference"));
    }
    if raw.contains(":/") || raw.contains("//") {
        return Err(format!("{raw:?} is not an image reference"));
    }
    Ok(())
}

/// Units that reboot, power off, suspend or isolate the machine when started: starting one is
/// not a service operation, whatever its tier says.
const POWER_UNITS: &[&str] = &[
    "reboot",
    "poweroff",
    "halt",
    "kexec",
    "shutdown",
    "ctrl-alt-del",
    "emergency",
    "rescue",
    "suspend",
    "hibernate",
    "hybrid-sleep",
    "suspend-then-hibernate",
    "sleep",
    "exit",
    "soft-reboot",
    "factory-reset",
    "systemd-reboot",
    "systemd-poweroff",
    "systemd-halt",
    "systemd-kexec",
    "systemd-soft-reboot",
    "systemd-suspend",
    "systemd-hibernate",
    "systemd-hybrid-sleep",
    "systemd-suspend-then-hibernate",
    "systemd-exit",
];

fn is_power_unit(unit: &str) -> bool {
    let name = unit.to_ascii_lowercase();
    let base = [".target", ".service"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
    POWER_UNITS.contains(&base)
}

/// Non-empty, bounded, made of `allowed` characters, and not an option.
fn name_like(raw: &str, max: usize, allowed: impl Fn(char) -> bool) -> Result<(), String> {
    if raw.is_empty() {
        return Err("empty".into());
    }
    if raw.len() > max {
        return Err(format!("longer than {max} bytes"));
    }
    if raw.starts_with('-') {
        return Err(format!("{raw:?} starts with '-' and would be read as an option"));
    }
    if let Some(bad) = raw.chars().find(|c| !allowed(*c)) {
        return Err(format!("{raw:?} contains {bad:?}, which is not allowed here"));
    }
    Ok(())
}

fn host(raw: &str) -> Result<(), String> {
    if raw.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let name = raw.strip_suffix('.').unwrap_or(raw);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{raw:?} is not a DNS name or IP address"));
    }
    Ok(())
}

fn url(raw: &str) -> Result<(), String> {
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .ok_or_else(|| format!("{raw:?} is not an http:// or https:// URL"))?;
    if raw.len() > MAX_PATH || raw.contains(char::is_whitespace) {
        return Err("URLs may not contain spaces or exceed 4096 bytes".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("credentials in URLs are not accepted (they would be logged)".into());
    }
    let host_part = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, port)| if port.parse::<u16>().is_ok() { h } else { authority })
    };
    host(host_part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_inject_are_refused() {
        for bad in ["-rf", "--now", "a b", "x;rm", "$(id)", "a\nb", "", "`x`"] {
            assert!(ParamKind::Unit.parse(bad).is_err(), "unit {bad:?}");
            assert!(ParamKind::Container.parse(bad).is_err(), "container {bad:?}");
        }
        assert!(ParamKind::Unit.parse("getty@tty1.service").is_ok());
        assert!(ParamKind::Unit.parse("systemd-fsck@dev-disk-by\\x2duuid.service").is_ok());
        assert!(ParamKind::Container.parse("web_1.prod").is_ok());
    }

    #[test]
    fn units_that_reboot_or_isolate_the_machine_are_refused() {
        for bad in
            ["reboot.target", "poweroff", "REBOOT.TARGET", "systemd-reboot.service", "rescue.target", "kexec"]
        {
            let err = ParamKind::Unit.parse(bad).expect_err(bad);
            assert!(err.contains("power state"), "{bad}: {err}");
        }
        for ok in ["multi-user.target", "nginx.service", "reboot-notifier", "sleep-inhibitor.service"] {
            assert!(ParamKind::Unit.parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn hosts_urls_and_paths() {
        for ok in ["localhost", "db.internal.", "10.0.0.1", "::1", "node_1.ts.net"] {
            assert!(ParamKind::Host.parse(ok).is_ok(), "{ok}");
        }
        for bad in ["-oProxyCommand=x", "a..b", "", "exa mple.com", "x.-y"] {
            assert!(ParamKind::Host.parse(bad).is_err(), "{bad}");
        }
        assert!(ParamKind::Url.parse("https://example.com:8443/health?x=1").is_ok());
        assert!(ParamKind::Url.parse("http://[::1]:80/").is_ok());
        assert!(ParamKind::Url.parse("https://user:pw@example.com/").is_err());
        assert!(ParamKind::Url.parse("file:///etc/passwd").is_err());
        assert!(ParamKind::Path.parse("relative/path").is_err());
        assert!(ParamKind::Glob.parse("*.log").is_ok());
        assert!(ParamKind::Glob.parse("../*.log").is_err());
    }

    #[test]
    fn glob_patterns_are_bounded() {
        // A run of stars is one group, however long.
        assert!(ParamKind::Glob.parse(&format!("{}#", "*".repeat(30))).is_ok());
        let sixteen = "*a".repeat(MAX_GLOB_STARS);
        assert!(ParamKind::Glob.parse(&sixteen).is_ok());
        let err = ParamKind::Glob.parse(&format!("{sixteen}*")).unwrap_err();
        assert!(err.contains("at most 16"), "{err}");
        let err = ParamKind::Glob.parse(&"a".repeat(256)).unwrap_err();
        assert!(err.contains("longer than 255 bytes"), "{err}");
    }

    #[test]
    fn numbers_flags_choices_durations() {
        assert_eq!(ParamKind::Port.parse("443"), Ok(Value::Int(443)));
        assert!(ParamKind::Port.parse("0").is_err());
        assert!(ParamKind::Int { min: 1, max: 10 }.parse("11").is_err());
        assert_eq!(ParamKind::Bool.parse("yes"), Ok(Value::Bool(true)));
        assert!(ParamKind::Choice(&["a", "b"]).parse("c").is_err());
        assert_eq!(
            ParamKind::Duration { max_secs: 60 }.parse("30s"),
            Ok(Value::Duration(Duration::from_secs(30)))
        );
        assert!(ParamKind::Duration { max_secs: 60 }.parse("2m").is_err());
    }

    #[test]
    fn package_lists_are_strict() {
        assert_eq!(
            ParamKind::Packages.parse("nginx,libc6:amd64, g++"),
            Ok(Value::List(vec!["nginx".into(), "libc6:amd64".into(), "g++".into()]))
        );
        for bad in ["-o,APT::x", "a;b", "", "a,,b", "Nginx", "a b", "$(id)", "a,-y", ".x", "pkg=1.0", "a/b"] {
            assert!(ParamKind::Packages.parse(bad).is_err(), "{bad:?}");
        }
        let many = vec!["p"; MAX_PACKAGES + 1].join(",");
        assert!(ParamKind::Packages.parse(&many).is_err());
        assert!(ParamKind::Packages.parse(&vec!["p"; MAX_PACKAGES].join(",")).is_ok());
    }

    #[test]
    fn image_references_cannot_name_other_sources() {
        for ok in ["nginx", "nginx:1.27", "ghcr.io/org/app@sha256:abc123", "localhost:5000/x/y:v1"] {
            assert!(ParamKind::Image.parse(ok).is_ok(), "{ok}");
        }
        for bad in ["dir:/etc", "dir:etc", "docker-archive:x.tar", "-x", "a b", "x://y", "file:x", "_x"] {
            assert!(ParamKind::Image.parse(bad).is_err(), "{bad}");
        }
    }
}
