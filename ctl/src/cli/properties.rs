//! Property tests for what the CLI parses before anything reaches the controller: `KEY=VALUE`
//! labels and parameters, host selectors, and whole command lines, against generated input.
//!
//! `PROPTEST_CASES=N` runs N cases per property instead of the numbers below.

use clap::Parser;
use proptest::prelude::*;

use super::{Cli, Command, SelectorArgs, friendly, parse_label};

fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    // `PROPTEST_CASES`, when set, is already in the default.
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { default.cases } else { cases };
    // No regression files in the source tree: a case worth keeping becomes a unit test.
    ProptestConfig { cases, failure_persistence: None, ..default }
}

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        3 => "[a-z=._-]{0,12}",
        1 => "-{1,2}[a-z=]{0,8}",
        1 => "[\u{0}-\u{1f}\u{7f}\u{202e}=a]{0,8}",
        1 => (any::<char>(), 0usize..5000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

/// One selector flag as a person could type it (always `--flag=value`, so a value that looks
/// like an option stays a value).
#[derive(Debug, Clone)]
enum Flag {
    All,
    Label(String),
    Host(String),
}

#[derive(Debug, Parser)]
struct SelectorCli {
    #[command(flatten)]
    selector: SelectorArgs,
}

/// The command line's words: the CLI's own vocabulary mixed with anything at all.
fn argv() -> impl Strategy<Value = Vec<String>> {
    let words = prop::sample::select(
        &[
            "token",
            "create",
            "ls",
            "revoke",
            "hosts",
            "show",
            "forget",
            "metrics",
            "top",
            "ps",
            "inventory",
            "exec",
            "op",
            "svc",
            "ctr",
            "files",
            "net",
            "pkg",
            "logs",
            "check",
            "jobs",
            "watch",
            "cancel",
            "approvals",
            "users",
            "bridges",
            "certs",
            "audit",
            "whoami",
            "login",
            "restart",
            "status",
            "read",
            "dns",
            "--label",
            "--label=a=b",
            "--host",
            "--host=web1",
            "--all",
            "--ttl",
            "--uses",
            "--timeout",
            "--timeout=1y",
            "--dry-run",
            "--reason",
            "--concurrency",
            "-o",
            "json",
            "--",
            "service.restart",
            "unit=nginx",
            "--since",
            "-f",
            "-n",
            "--file",
            "--elevate",
            "--spark",
            "--help",
            "--version",
            "1",
            "0",
            "-1",
            "18446744073709551616",
        ][..],
    );
    prop::collection::vec(prop_oneof![3 => words.prop_map(str::to_owned), 1 => hostile_text()], 0..10)
}

proptest! {
    #![proptest_config(config(2000))]

    /// `KEY=VALUE` splits at the first `=` into a non-empty key and the rest, or is refused
    /// with the input quoted.
    #[test]
    fn labels_split_at_the_first_equals_sign_or_are_refused(text in hostile_text()) {
        match parse_label(&text) {
            Ok((key, value)) => {
                prop_assert!(!key.is_empty() && !key.contains('='));
                prop_assert_eq!(format!("{key}={value}"), text);
            }
            Err(message) => {
                prop_assert!(text.starts_with('=') || !text.contains('='));
                prop_assert!(message.contains("KEY=VALUE") && message.contains(&format!("{text:?}")), "{}", message);
            }
        }
    }

    /// A selector is accepted exactly when it names something and `--all` stands alone, and
    /// what goes on the wire is what was typed.
    #[test]
    fn selectors_are_accepted_exactly_when_they_name_hosts(
        flags in prop::collection::vec(
            prop_oneof![
                1 => Just(Flag::All),
                3 => hostile_text().prop_map(Flag::Label),
                3 => hostile_text().prop_map(Flag::Host),
            ],
            0..5,
        ),
    ) {
        let all = flags.iter().filter(|f| matches!(f, Flag::All)).count();
        let labels: Vec<&String> = flags.iter().filter_map(|f| match f { Flag::Label(l) => Some(l), _ => None }).collect();
        let hosts: Vec<String> = flags.iter().filter_map(|f| match f { Flag::Host(h) => Some(h.clone()), _ => None }).collect();
        let words = flags.iter().map(|f| match f {
            Flag::All => "--all".to_owned(),
            Flag::Label(l) => format!("--label={l}"),
            Flag::Host(h) => format!("--host={h}"),
        });
        let parsed = SelectorCli::try_parse_from(std::iter::once("t".to_owned()).chain(words));
        let acceptable = !flags.is_empty()
            && all <= 1
            && (all == 0 || (labels.is_empty() && hosts.is_empty()))
            && labels.iter().all(|l| parse_label(l).is_ok());
        match parsed {
            Ok(cli) => {
                prop_assert!(acceptable, "{:?}", flags);
                let wire = cli.selector.to_wire();
                prop_assert!(wire.all || !wire.labels.is_empty() || !wire.hosts.is_empty());
                prop_assert_eq!(wire.all, all == 1);
                prop_assert_eq!(wire.hosts, hosts);
                // A repeated key keeps its last value.
                let expected: std::collections::BTreeMap<String, String> =
                    labels.iter().map(|l| parse_label(l).expect("acceptable")).collect();
                prop_assert_eq!(wire.labels, expected);
            }
            Err(e) => {
                prop_assert!(!acceptable, "{:?} refused: {}", flags, e);
                prop_assert!(!e.to_string().trim().is_empty());
            }
        }
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Any command line gets a verdict, never a panic; a refusal renders as text; a short form
    /// that parses resolves to an operation that validation can judge.
    #[test]
    fn any_command_line_gets_a_verdict(words in argv()) {
        match Cli::try_parse_from(std::iter::once("tailopsctl".to_owned()).chain(words)) {
            Ok(cli) => {
                let short = match &cli.command {
                    Command::Svc(args) => Some((friendly::SVC, args)),
                    Command::Ctr(args) => Some((friendly::CTR, args)),
                    Command::Files(args) => Some((friendly::FILES, args)),
                    Command::Net(args) => Some((friendly::NET, args)),
                    Command::Pkg(args) => Some((friendly::PKG, args)),
                    _ => None,
                };
                if let Some((family, args)) = short {
                    let (name, params) = friendly::resolve(family, args);
                    prop_assert!(name.starts_with(family.family));
                    if let Err(e) = tailops_ops::validate(&name, &params, false) {
                        prop_assert!(!e.to_string().trim().is_empty());
                    }
                }
            }
            Err(e) => prop_assert!(!e.render().to_string().trim().is_empty()),
        }
    }
}
