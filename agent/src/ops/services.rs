//! systemd services through `systemctl`. A unit is checked against systemd before anything is
//! changed, so a typo is "unknown unit", not a confusing failure; unit names reach argv after
//! `--`, so none can be read as an option even if validation were bypassed.

use std::collections::BTreeMap;
use std::time::Duration;

use tailops_ops::Validated;
use tailops_proto::v1;

use super::output::{Cell, Table};
use super::tool::{self, Ran};
use super::{OpError, OpsConfig};

/// Properties `service.status` reports, in this order.
const STATUS_PROPERTIES: &[&str] = &[
    "Id",
    "Description",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "MainPID",
    "MemoryCurrent",
    "NRestarts",
    "ActiveEnterTimestamp",
    "FragmentPath",
];

pub async fn run(
    op: &Validated,
    config: &OpsConfig,
    timeout: Duration,
) -> Result<v1::OperationOutput, OpError> {
    let systemctl = &Systemctl { path: tool::locate(&config.systemctl, "systemctl").await?, timeout };
    let verb = op.spec.name.trim_start_matches("service.");
    match verb {
        "list" => {
            let mut args: Vec<String> =
                ["list-units", "--type=service", "--all", "--no-legend", "--plain", "--no-pager"]
                    .map(String::from)
                    .into();
            let state = op.text("state").unwrap_or("all");
            if state != "all" {
                args.push(format!("--state={state}"));
            }
            let ran = systemctl.run(&args).await?;
            if !ran.success() {
                return Err(OpError::Failed(format!("systemctl list-units: {}", ran.complaint())));
            }
            let mut table = Table::new(&["unit", "load", "active", "sub", "description"]);
            for unit in parse_list(&ran.stdout) {
                table.row([
                    unit.name.into(),
                    unit.load.into(),
                    unit.active.into(),
                    unit.sub.into(),
                    unit.description.into(),
                ]);
            }
            table.step(&prefixed("systemctl", &args));
            let n = table.len();
            table.summary(format!("{n} service(s)"));
            Ok(table.finish())
        }
        "status" => {
            let unit = op.text("unit").unwrap_or_default();
            let properties = show(systemctl, unit).await?;
            let mut table = Table::new(&["property", "value"]);
            for key in STATUS_PROPERTIES {
                if let Some(value) = properties.get(*key) {
                    table.row([Cell::from(*key), Cell::from(value.clone())]);
                }
            }
            table.step(&["systemctl", "show", "--property=...", "--", unit]);
            table.summary(state_line(unit, &properties));
            Ok(table.finish())
        }
        "start" | "stop" | "restart" | "reload" | "enable" | "disable" => {
            let unit = op.text("unit").unwrap_or_default();
            // Checked against systemd first: an unknown unit is refused before anything runs.
            let before = show(systemctl, unit).await?;
            let argv = ["systemctl", verb, "--", unit];
            let mut table = Table::new(&["property", "value"]);
            table.step(&argv);
            if op.dry_run {
                table.summary(format!("would run: {} ({})", argv.join(" "), state_line(unit, &before)));
                return Ok(table.finish());
            }
            let ran = systemctl.run(&argv[1..]).await?;
            if !ran.success() {
                return Err(OpError::Failed(format!("systemctl {verb} {unit}: {}", ran.complaint())));
            }
            let after = show(systemctl, unit).await?;
            for key in ["ActiveState", "SubState", "UnitFileState", "MainPID"] {
                if let Some(value) = after.get(key) {
                    table.row([Cell::from(key), Cell::from(value.clone())]);
                }
            }
            table.summary(format!("{verb}: {}", state_line(unit, &after)));
            Ok(table.finish())
        }
        other => Err(OpError::NotAvailable(format!("service.{other} is not implemented by this agent"))),
    }
}

/// `systemctl show` of `unit` as a map; an unknown unit is an error.
/// systemctl, located once; every run gets the job's deadline, and a host without a running
/// systemd makes the operation "not available".
struct Systemctl {
    path: std::path::PathBuf,
    timeout: Duration,
}

impl Systemctl {
    async fn run<S: AsRef<str>>(&self, args: &[S]) -> Result<Ran, OpError> {
        let argv: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let ran = tool::run(&self.path, &argv, self.timeout).await?;
        no_systemd(&ran)?;
        Ok(ran)
    }
}

async fn show(systemctl: &Systemctl, unit: &str) -> Result<BTreeMap<String, String>, OpError> {
    let properties = format!("--property={}", STATUS_PROPERTIES.join(","));
    let ran = systemctl.run(&["show", "--no-pager", &properties, "--", unit]).await?;
    if !ran.success() {
        return Err(OpError::Failed(format!("systemctl show {unit}: {}", ran.complaint())));
    }
    let properties = parse_show(&ran.stdout);
    if properties.get("LoadState").is_none_or(|s| s == "not-found") {
        return Err(OpError::Refused(format!(
            "unknown unit {unit:?} on this host; `service.list` shows the units it has"
        )));
    }
    Ok(properties)
}

/// systemctl without a running systemd (containers, WSL): the host lacks the facility.
fn no_systemd(ran: &Ran) -> Result<(), OpError> {
    let text = format!("{}{}", ran.stderr, ran.stdout);
    if text.contains("has not been booted with systemd") || text.contains("Failed to connect to bus") {
        return Err(OpError::NotAvailable("systemd is not running on this host".into()));
    }
    Ok(())
}

fn prefixed(program: &str, args: &[String]) -> Vec<String> {
    std::iter::once(program.to_owned()).chain(args.iter().cloned()).collect()
}

fn state_line(unit: &str, p: &BTreeMap<String, String>) -> String {
    let get = |k: &str| p.get(k).map_or("?", String::as_str);
    format!("{unit} is {} ({}), {}", get("ActiveState"), get("SubState"), get("UnitFileState"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Unit {
    name: String,
    load: String,
    active: String,
    sub: String,
    description: String,
}

/// `systemctl list-units --plain --no-legend` lines: `UNIT LOAD ACTIVE SUB DESCRIPTION...`.
/// Older versions prefix failed units with `●` even with `--plain`.
fn parse_list(text: &str) -> Vec<Unit> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start_matches(|c: char| c == '●' || c == '*' || c.is_whitespace());
            let mut parts = line.split_whitespace();
            let name = parts.next()?.to_owned();
            let load = parts.next()?.to_owned();
            let active = parts.next()?.to_owned();
            let sub = parts.next()?.to_owned();
            let description = parts.collect::<Vec<_>>().join(" ");
            Some(Unit { name, load, active, sub, description })
        })
        .collect()
}

/// `systemctl show` output: `Key=Value` lines.
fn parse_show(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `systemctl list-units --type=service --all --no-legend --plain --no-pager`
    /// on Debian 12 (systemd 252), with a failed unit as older versions print it.
    const LIST: &str = "\
cron.service                         loaded    active   running Regular background program processing daemon
dbus.service                         loaded    active   running D-Bus System Message Bus
● nginx.service                      loaded    failed   failed  A high performance web server and a reverse proxy server
systemd-fsck@dev-vda1.service        loaded    inactive dead    File System Check on /dev/vda1
ufw.service                          not-found inactive dead    ufw.service
";

    /// Captured from `systemctl show --property=... -- ssh` on Debian 12.
    const SHOW: &str = "\
Id=ssh.service
Description=OpenBSD Secure Shell server
LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled
MainPID=612
MemoryCurrent=6189056
NRestarts=0
ActiveEnterTimestamp=Thu 2026-11-26 08:12:03 UTC
FragmentPath=/lib/systemd/system/ssh.service
";

    #[test]
    fn list_output_is_parsed_including_failed_markers() {
        let units = parse_list(LIST);
        assert_eq!(units.len(), 5);
        assert_eq!(units[2].name, "nginx.service");
        assert_eq!((units[2].active.as_str(), units[2].sub.as_str()), ("failed", "failed"));
        assert_eq!(units[3].name, "systemd-fsck@dev-vda1.service");
        assert_eq!(units[0].description, "Regular background program processing daemon");
    }

    #[test]
    fn show_output_is_parsed() {
        let p = parse_show(SHOW);
        assert_eq!(p["MainPID"], "612");
        assert_eq!(state_line("ssh", &p), "ssh is active (running), enabled");
    }
}
