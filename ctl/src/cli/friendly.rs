//! Short forms of common operations: `tailopsctl svc restart nginx --host web1` is
//! `tailopsctl op service.restart --host web1 unit=nginx`. Each command names a family and the
//! parameter its positional target fills; the catalog does the rest (and its errors say what
//! exists).

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;
use tonic::transport::Channel;

use super::ops::{JobFlags, run_operation};
use super::{Output, parse_label};

/// `VERB [TARGET] [KEY=VALUE...]` plus where and how to run.
#[derive(Debug, Clone, Args)]
pub struct FriendlyArgs {
    /// What to do, e.g. list, status, restart (`tailopsctl op ls FAMILY` lists them).
    verb: String,
    /// The thing to act on (unit, container, path, host, packages), when the operation needs one.
    target: Option<String>,
    /// Further parameters, KEY=VALUE.
    #[arg(value_name = "KEY=VALUE", value_parser = parse_label)]
    params: Vec<(String, String)>,
    #[command(flatten)]
    job: JobFlags,
}

/// A friendly command: its operation family and the parameter the positional target fills.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub family: &'static str,
    pub target: &'static str,
}

pub const SVC: Family = Family { family: "service", target: "unit" };
pub const CTR: Family = Family { family: "container", target: "container" };
pub const FILES: Family = Family { family: "file", target: "path" };
pub const NET: Family = Family { family: "net", target: "host" };
pub const PKG: Family = Family { family: "package", target: "packages" };

/// The operation and parameters `args` mean for `family`.
pub fn resolve(family: Family, args: &FriendlyArgs) -> (String, BTreeMap<String, String>) {
    let verb = match args.verb.as_str() {
        "ls" => "list",
        other => other,
    };
    let mut params: BTreeMap<String, String> = args.params.iter().cloned().collect();
    if let Some(target) = &args.target {
        // `net dns NAME` fills `name`; every other net check takes `host`.
        let key = if family.family == "net" && verb == "dns" { "name" } else { family.target };
        params.insert(key.to_owned(), target.clone());
    }
    (format!("{}.{verb}", family.family), params)
}

/// `tailopsctl logs`: the journal, or a file with `--file`; `-f` follows until the deadline.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Only this systemd unit.
    #[arg(long, short = 'u')]
    unit: Option<String>,
    /// A log file (under the host's allowed directories) instead of the journal.
    #[arg(long, conflicts_with_all = ["unit", "since", "priority", "grep"])]
    file: Option<String>,
    /// Keep streaming new lines until --timeout (or Ctrl-C).
    #[arg(long, short = 'f')]
    follow: bool,
    /// How many of the last lines to show first.
    #[arg(long, short = 'n')]
    lines: Option<u32>,
    /// Only entries newer than this, e.g. 1h.
    #[arg(long)]
    since: Option<String>,
    /// Only entries at this priority or more urgent (emerg..debug).
    #[arg(long, short = 'p')]
    priority: Option<String>,
    /// Only entries matching this pattern.
    #[arg(long, short = 'g')]
    grep: Option<String>,
    #[command(flatten)]
    job: JobFlags,
}

impl LogsArgs {
    fn resolve(&self) -> (&'static str, BTreeMap<String, String>) {
        let mut params = BTreeMap::new();
        let mut set = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                params.insert(k.to_owned(), v);
            }
        };
        set("lines", self.lines.map(|n| n.to_string()));
        set("follow", self.follow.then(|| "true".to_owned()));
        let name = match &self.file {
            Some(path) => {
                set("path", Some(path.clone()));
                "log.file"
            }
            None => {
                set("unit", self.unit.clone());
                set("since", self.since.clone());
                set("priority", self.priority.clone());
                set("grep", self.grep.clone());
                "log.journal"
            }
        };
        (name, params)
    }
}

pub async fn logs(channel: Channel, args: LogsArgs, output: Output) -> anyhow::Result<ExitCode> {
    let (name, params) = args.resolve();
    run_operation(channel, name, params, args.job, output).await
}

/// `tailopsctl check`: the security checks, or `check secrets PATH` / `check vulns PATH`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// `basics` (default: CIS-style checks), `secrets` or `vulns`.
    #[arg(default_value = "basics")]
    what: String,
    /// The path to scan (secrets, vulns).
    path: Option<String>,
    #[command(flatten)]
    job: JobFlags,
}

pub async fn check(channel: Channel, args: CheckArgs, output: Output) -> anyhow::Result<ExitCode> {
    let name = match args.what.as_str() {
        "basics" => "security.checks",
        "secrets" => "security.secrets",
        "vulns" => "security.vulnscan",
        other => anyhow::bail!("unknown check {other:?}: use basics, secrets or vulns"),
    };
    let params = args.path.into_iter().map(|p| ("path".to_owned(), p)).collect();
    run_operation(channel, name, params, args.job, output).await
}

pub async fn run(
    channel: Channel,
    family: Family,
    args: FriendlyArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let (name, params) = resolve(family, &args);
    run_operation(channel, &name, params, args.job, output).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: FriendlyArgs,
    }

    fn parse(argv: &[&str]) -> FriendlyArgs {
        Cli::parse_from(std::iter::once("t").chain(argv.iter().copied())).args
    }

    #[derive(Debug, Parser)]
    struct LogsCli {
        #[command(flatten)]
        args: LogsArgs,
    }

    #[test]
    fn logs_map_to_the_journal_or_a_file() {
        let parse =
            |argv: &[&str]| LogsCli::parse_from(std::iter::once("t").chain(argv.iter().copied())).args;
        let (name, params) = parse(&["-u", "nginx", "-f", "--since", "1h", "--all"]).resolve();
        assert_eq!(name, "log.journal");
        assert_eq!(params.get("follow").map(String::as_str), Some("true"));
        assert!(tailops_ops::validate(name, &params, false).is_ok());
        let (name, params) = parse(&["--file", "/var/log/syslog", "-n", "5", "--host", "a"]).resolve();
        assert_eq!((name, params.get("lines").map(String::as_str)), ("log.file", Some("5")));
        assert!(tailops_ops::validate(name, &params, false).is_ok());
    }

    #[test]
    fn short_forms_map_to_catalog_operations() {
        let (name, params) = resolve(SVC, &parse(&["restart", "nginx", "--host", "web1"]));
        assert_eq!(
            (name.as_str(), params.get("unit").map(String::as_str)),
            ("service.restart", Some("nginx"))
        );
        let (name, params) = resolve(NET, &parse(&["port", "db", "port=5432", "--all"]));
        assert_eq!(name, "net.port");
        assert_eq!(params.get("host").map(String::as_str), Some("db"));
        assert_eq!(params.get("port").map(String::as_str), Some("5432"));
        let (name, params) = resolve(NET, &parse(&["dns", "example.com", "type=MX", "--all"]));
        assert_eq!((name.as_str(), params.get("name").map(String::as_str)), ("net.dns", Some("example.com")));
        let (name, _) = resolve(CTR, &parse(&["ls", "--all"]));
        assert_eq!(name, "container.list");
        let (name, params) = resolve(FILES, &parse(&["tail", "/var/log/syslog", "lines=5", "--host", "a"]));
        assert_eq!(name, "file.tail");
        assert_eq!(params.len(), 2);
        for (name, _) in
            [resolve(SVC, &parse(&["ls", "--all"])), resolve(CTR, &parse(&["restart", "web", "--all"]))]
        {
            assert!(tailops_ops::find(&name).is_some(), "{name} is in the catalog");
        }
    }
}
