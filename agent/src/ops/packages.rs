//! Packages through apt (Debian, Ubuntu) or dnf (Fedora, RHEL): whichever the host has, apt
//! first. Package names were validated as names (`[a-z0-9][a-z0-9+.-_:]*`) and reach argv after
//! `--`, so none can be read as an option.
//!
//! - `package.updates` reads what the package lists already say (`apt list --upgradable`,
//!   `dnf check-update`); it never refreshes them, which would change state.
//! - `package.upgrade` and `package.install` run non-interactively (`DEBIAN_FRONTEND=noninteractive`,
//!   keeping changed configuration files). Their apt dry run really runs the simulation
//!   (`apt-get -s ...`, which changes nothing) and reports what would change; dnf's dry run only
//!   says what would run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tailops_ops::Validated;
use tailops_proto::v1;

use super::output::{Cell, Table};
use super::tool::{self, Ran};
use super::{OpError, OpsConfig};

/// Keep the installed version of a changed configuration file instead of asking.
const CONFOLD: &str = "Dpkg::Options::=--force-confold";

#[derive(Debug, Clone)]
enum Manager {
    Apt { apt_get: PathBuf },
    Dnf { dnf: PathBuf },
}

async fn detect(config: &OpsConfig) -> Result<Manager, OpError> {
    if let Ok(apt_get) = tool::locate(&config.apt_get, "apt-get").await {
        return Ok(Manager::Apt { apt_get });
    }
    if let Ok(dnf) = tool::locate(&config.dnf, "dnf").await {
        return Ok(Manager::Dnf { dnf });
    }
    Err(OpError::NotAvailable(format!(
        "no supported package manager: neither apt-get ({}) nor dnf ({}) is installed",
        config.apt_get.display(),
        config.dnf.display()
    )))
}

pub async fn run(
    op: &Validated,
    config: &OpsConfig,
    timeout: Duration,
) -> Result<v1::OperationOutput, OpError> {
    let manager = detect(config).await?;
    match op.spec.name {
        "package.updates" => updates(&manager, config, timeout).await,
        "package.upgrade" | "package.install" => change(op, &manager, timeout).await,
        other => Err(OpError::NotAvailable(format!("{other} is not implemented by this agent"))),
    }
}

async fn updates(
    manager: &Manager,
    config: &OpsConfig,
    timeout: Duration,
) -> Result<v1::OperationOutput, OpError> {
    let mut table = Table::new(&["name", "current", "available", "source"]);
    let found = match manager {
        Manager::Apt { .. } => {
            let apt = tool::locate(&config.apt, "apt").await?;
            let args = ["list", "--upgradable"];
            let ran = tool::run(&apt, &args, timeout).await?;
            if !ran.success() {
                return Err(OpError::Failed(format!("apt list --upgradable: {}", ran.complaint())));
            }
            table.step(&["apt", "list", "--upgradable"]);
            parse_apt_upgradable(&ran.stdout)
        }
        Manager::Dnf { dnf } => {
            let args = ["check-update", "--quiet"];
            let ran = tool::run(dnf, &args, timeout).await?;
            // 100: updates are available; 0: none; anything else is an error.
            if !matches!(ran.status, Some(0 | 100)) {
                return Err(OpError::Failed(format!("dnf check-update: {}", ran.complaint())));
            }
            table.step(&["dnf", "check-update", "--quiet"]);
            parse_dnf_check_update(&ran.stdout)
        }
    };
    for u in &found {
        table.row([
            Cell::from(u.name.clone()),
            Cell::from(u.current.clone()),
            Cell::from(u.available.clone()),
            Cell::from(u.source.clone()),
        ]);
    }
    table.summary(format!(
        "{} update(s) available (package lists as last refreshed; nothing was refreshed)",
        found.len()
    ));
    Ok(table.finish())
}

/// The argv (after the program) of a change: `upgrade` with or without names, or `install`.
fn change_args(manager: &Manager, install: bool, names: &[String]) -> Vec<String> {
    let mut args: Vec<String> = match manager {
        Manager::Apt { .. } => ["-y", "-o", CONFOLD].map(String::from).into(),
        Manager::Dnf { .. } => vec!["-y".into()],
    };
    match (manager, install, names.is_empty()) {
        (Manager::Apt { .. }, false, true) => args.push("upgrade".into()),
        (Manager::Apt { .. }, false, false) => args.extend(["install", "--only-upgrade"].map(String::from)),
        (Manager::Apt { .. }, true, _) => args.push("install".into()),
        (Manager::Dnf { .. }, false, _) => args.push("upgrade".into()),
        (Manager::Dnf { .. }, true, _) => args.push("install".into()),
    }
    if !names.is_empty() {
        args.push("--".into());
        args.extend(names.iter().cloned());
    }
    args
}

async fn change(
    op: &Validated,
    manager: &Manager,
    timeout: Duration,
) -> Result<v1::OperationOutput, OpError> {
    let install = op.spec.name == "package.install";
    let names = op.list("packages");
    if install && names.is_empty() {
        return Err(OpError::Failed("package.install needs packages=...".into()));
    }
    let args = change_args(manager, install, names);
    let shown = match manager {
        Manager::Apt { .. } => "apt-get",
        Manager::Dnf { .. } => "dnf",
    };
    let argv: Vec<String> = std::iter::once(shown.to_owned()).chain(args.iter().cloned()).collect();
    let mut table = Table::new(&["action", "name", "current", "available", "source"]);
    table.step(&argv);
    let what = if install { "install" } else { "upgrade" };
    if op.dry_run {
        let Manager::Apt { apt_get } = manager else {
            table.summary(format!("would run: {} (dnf: no simulation was run)", argv.join(" ")));
            return Ok(table.finish());
        };
        // `-s` simulates: apt resolves the transaction and prints it, changing nothing.
        let mut sim: Vec<String> = vec!["-s".into()];
        sim.extend(args.iter().filter(|a| *a != "-y").cloned());
        let ran = apt_run(apt_get, &sim, timeout).await?;
        if !ran.success() {
            return Err(OpError::Failed(format!("apt-get -s {what}: {}", ran.complaint())));
        }
        let changes = parse_apt_simulation(&ran.stdout);
        for c in &changes {
            table.row([
                Cell::from(c.action),
                Cell::from(c.name.clone()),
                Cell::from(c.current.clone()),
                Cell::from(c.available.clone()),
                Cell::from(c.source.clone()),
            ]);
        }
        let simulated: Vec<String> = std::iter::once("apt-get".to_owned()).chain(sim).collect();
        table.summary(format!(
            "would run: {} ({} package change(s), simulated with {})",
            argv.join(" "),
            changes.len(),
            simulated.join(" ")
        ));
        return Ok(table.finish());
    }
    let ran = match manager {
        Manager::Apt { apt_get } => apt_run(apt_get, &args, timeout).await?,
        Manager::Dnf { dnf } => {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            tool::run(dnf, &refs, timeout).await?
        }
    };
    if !ran.success() {
        return Err(OpError::Failed(format!("{shown} {what}: {}", ran.complaint())));
    }
    let done = match manager {
        Manager::Apt { .. } => parse_apt_setup(&ran.stdout),
        Manager::Dnf { .. } => parse_dnf_done(&ran.stdout),
    };
    for (action, name, version) in &done {
        table.row([
            Cell::from(action.clone()),
            Cell::from(name.clone()),
            Cell::None,
            Cell::from(version.clone()),
            Cell::None,
        ]);
    }
    table.summary(format!("{what}: {} package(s) changed", done.len()));
    Ok(table.finish())
}

/// Like [`tool::run`] (its own process group, killed with everything in it on timeout or
/// cancel), with apt's non-interactive frontend.
async fn apt_run(program: &Path, args: &[String], timeout: Duration) -> Result<Ran, OpError> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tool::run_with_env(program, &args, &[("DEBIAN_FRONTEND", "noninteractive")], timeout).await
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Update {
    name: String,
    current: Option<String>,
    available: String,
    source: String,
}

/// `apt list --upgradable`: `name/suite[,suite] version arch [upgradable from: old]`, after a
/// `Listing...` line (and a warning about apt's CLI on stderr, ignored).
fn parse_apt_upgradable(text: &str) -> Vec<Update> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once('/')?;
            let mut parts = rest.split_whitespace();
            let source = parts.next()?.to_owned();
            let available = parts.next()?.to_owned();
            let current = line
                .split_once("[upgradable from: ")
                .and_then(|(_, v)| v.strip_suffix(']'))
                .map(str::to_owned);
            Some(Update { name: name.to_owned(), current, available, source })
        })
        .collect()
}

/// `dnf check-update --quiet`: `name.arch  version  repo` lines; a long name may put the rest
/// on the next line. Obsoleted packages follow a heading and are not updates of their own.
fn parse_dnf_check_update(text: &str) -> Vec<Update> {
    let mut found = Vec::new();
    let mut carried: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("Obsoleting Packages") {
            break;
        }
        let mut fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || line.starts_with("Last metadata") || line.starts_with("Security:") {
            continue;
        }
        let joined;
        if let Some(name) = carried.take() {
            joined = format!("{name} {line}");
            fields = joined.split_whitespace().collect();
        }
        match fields.as_slice() {
            [name] => carried = Some((*name).to_owned()),
            [name, version, repo, ..] => found.push(Update {
                name: (*name).to_owned(),
                current: None,
                available: (*version).to_owned(),
                source: (*repo).to_owned(),
            }),
            _ => {}
        }
    }
    found
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    action: &'static str,
    name: String,
    current: Option<String>,
    available: Option<String>,
    source: Option<String>,
}

/// `apt-get -s` lines: `Inst name [old] (new source [arch])`, `Remv name [old]`. `Conf` lines
/// repeat the `Inst` ones and are skipped.
fn parse_apt_simulation(text: &str) -> Vec<Change> {
    text.lines()
        .filter_map(|line| {
            let (kind, rest) = line.split_once(' ')?;
            let (name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let bracket = rest.strip_prefix('[').and_then(|r| r.split_once(']'));
            let current = bracket.map(|(v, _)| v.to_owned());
            let rest = bracket.map_or(rest, |(_, r)| r).trim();
            let paren = rest.strip_prefix('(').and_then(|r| r.split_once(')')).map(|(v, _)| v);
            let mut words = paren.map(|p| p.split_whitespace().collect::<Vec<_>>()).unwrap_or_default();
            // The last word is the architecture in brackets.
            if words.last().is_some_and(|w| w.starts_with('[')) {
                words.pop();
            }
            let available = words.first().map(|v| (*v).to_owned());
            let source = (words.len() > 1).then(|| words[1..].join(" "));
            let action = match kind {
                "Inst" if current.is_some() => "upgrade",
                "Inst" => "install",
                "Remv" => "remove",
                _ => return None,
            };
            Some(Change { action, name: name.to_owned(), current, available, source })
        })
        .collect()
}

/// `Setting up name:arch (version) ...` lines of a real apt run.
fn parse_apt_setup(text: &str) -> Vec<(String, String, Option<String>)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("Setting up "))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once(' ')?;
            let version = rest.strip_prefix('(').and_then(|r| r.split_once(')')).map(|(v, _)| v.to_owned());
            Some(("set up".to_owned(), name.to_owned(), version))
        })
        .collect()
}

/// dnf's closing sections: `Upgraded:` / `Installed:` followed by indented `name-version.arch`.
fn parse_dnf_done(text: &str) -> Vec<(String, String, Option<String>)> {
    let mut action = None;
    let mut done = Vec::new();
    for line in text.lines() {
        match line.trim_end() {
            "Upgraded:" => action = Some("upgraded"),
            "Installed:" => action = Some("installed"),
            "Complete!" | "" => action = None,
            l if l.starts_with(' ') => {
                if let Some(a) = action {
                    done.extend(l.split_whitespace().map(|p| (a.to_owned(), p.to_owned(), None)));
                }
            }
            _ => action = None,
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `apt list --upgradable` on Debian 12 (stdout only; stderr carried
    /// "WARNING: apt does not have a stable CLI interface. Use with caution in scripts.").
    const APT_LIST: &str = "\
Listing...
apt/oldstable-security 2.6.2 amd64 [upgradable from: 2.6.1]
base-files/oldstable 12.4+deb12u15 amd64 [upgradable from: 12.4+deb12u11]
ca-certificates/oldstable-security 20250419~deb12u2 all [upgradable from: 20230311+deb12u1]
libssl3/oldstable-security,oldstable 3.0.17-1~deb12u3 amd64 [upgradable from: 3.0.15-1~deb12u1]
";

    /// Captured from `dnf check-update --quiet` on Fedora 40 (exit status 100), with a wrapped
    /// long name and the obsoletes section.
    const DNF_CHECK: &str = "

NetworkManager.x86_64                     1:1.46.2-1.fc40                updates
curl.x86_64                               8.6.0-10.fc40                  updates
texlive-collection-latexrecommended.noarch
                                          11:svn65512-71.fc40            updates
kernel-core.x86_64                        6.11.5-200.fc40                updates
Obsoleting Packages
grub2-tools.x86_64                        1:2.06-121.fc40                updates
    grub2-tools.x86_64                    1:2.06-120.fc40                @updates
";

    /// Captured from `apt-get -s -o Dpkg::Options::=--force-confold install -- hello bash` on
    /// Debian 12, plus a removal line.
    const APT_SIM: &str = "\
NOTE: This is only a simulation!
      apt-get needs root privileges for real execution.
Reading package lists...
Building dependency tree...
The following NEW packages will be installed:
  hello
1 upgraded, 1 newly installed, 1 to remove and 131 not upgraded.
Remv oldpkg [1.0-1]
Inst bash [5.2.15-2+b8] (5.2.15-2+b13 Debian:12.15/oldstable [amd64])
Inst hello (2.10-3 Debian:12.15/oldstable [amd64])
Conf bash (5.2.15-2+b13 Debian:12.15/oldstable [amd64])
Conf hello (2.10-3 Debian:12.15/oldstable [amd64])
";

    #[test]
    fn apt_upgradable_is_parsed() {
        let u = parse_apt_upgradable(APT_LIST);
        assert_eq!(u.len(), 4);
        assert_eq!(u[0].name, "apt");
        assert_eq!(u[0].available, "2.6.2");
        assert_eq!(u[0].current.as_deref(), Some("2.6.1"));
        assert_eq!(u[0].source, "oldstable-security");
        assert_eq!(u[3].source, "oldstable-security,oldstable");
        assert_eq!(u[3].current.as_deref(), Some("3.0.15-1~deb12u1"));
        assert!(parse_apt_upgradable("Listing...\n").is_empty());
    }

    #[test]
    fn dnf_check_update_is_parsed_with_wrapped_names() {
        let u = parse_dnf_check_update(DNF_CHECK);
        let names: Vec<&str> = u.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "NetworkManager.x86_64",
                "curl.x86_64",
                "texlive-collection-latexrecommended.noarch",
                "kernel-core.x86_64"
            ]
        );
        assert_eq!(u[2].available, "11:svn65512-71.fc40");
        assert_eq!(u[2].source, "updates");
        assert_eq!(u[0].current, None);
    }

    #[test]
    fn apt_simulation_is_parsed() {
        let c = parse_apt_simulation(APT_SIM);
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!((c[0].action, c[0].name.as_str()), ("remove", "oldpkg"));
        assert_eq!(c[1].action, "upgrade");
        assert_eq!(c[1].current.as_deref(), Some("5.2.15-2+b8"));
        assert_eq!(c[1].available.as_deref(), Some("5.2.15-2+b13"));
        assert_eq!(c[1].source.as_deref(), Some("Debian:12.15/oldstable"));
        assert_eq!((c[2].action, c[2].name.as_str()), ("install", "hello"));
        assert_eq!(c[2].current, None);
    }

    #[test]
    fn real_run_output_is_parsed() {
        let apt = "Unpacking hello (2.10-3) ...\nSetting up hello (2.10-3) ...\nProcessing triggers for man-db (2.11.2-2) ...\n";
        assert_eq!(parse_apt_setup(apt), vec![("set up".into(), "hello".into(), Some("2.10-3".into()))]);
        let dnf = "Upgraded:\n  curl-8.6.0-10.fc40.x86_64   libcurl-8.6.0-10.fc40.x86_64\nInstalled:\n  hello-2.12.1-2.fc40.x86_64\n\nComplete!\n";
        let done = parse_dnf_done(dnf);
        assert_eq!(done.len(), 3);
        assert_eq!(done[2], ("installed".into(), "hello-2.12.1-2.fc40.x86_64".into(), None));
    }

    #[test]
    fn argv_puts_names_after_the_separator() {
        let apt = Manager::Apt { apt_get: "apt-get".into() };
        let dnf = Manager::Dnf { dnf: "dnf".into() };
        let names = vec!["nginx".to_owned(), "curl".to_owned()];
        assert_eq!(change_args(&apt, false, &[]).join(" "), format!("-y -o {CONFOLD} upgrade"));
        assert_eq!(
            change_args(&apt, false, &names).join(" "),
            format!("-y -o {CONFOLD} install --only-upgrade -- nginx curl")
        );
        assert_eq!(
            change_args(&apt, true, &names).join(" "),
            format!("-y -o {CONFOLD} install -- nginx curl")
        );
        assert_eq!(change_args(&dnf, false, &[]).join(" "), "-y upgrade");
        assert_eq!(change_args(&dnf, true, &names).join(" "), "-y install -- nginx curl");
    }
}
