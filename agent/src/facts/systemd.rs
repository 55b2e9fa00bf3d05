//! `unit.<name>` = `<load>/<active>/<sub>` for every service systemd knows, and
//! `capability.systemd`, when the host was booted with systemd and `systemctl` answers.

use std::path::Path;
use std::time::Duration;

use super::{Facts, command, exists, insert};

const ARGS: &[&str] = &["list-units", "--type=service", "--all", "--no-legend", "--plain", "--no-pager"];

pub(super) async fn collect(root: &Path, program: &Path, timeout: Duration) -> Facts {
    // sd_booted(3): this directory exists exactly when systemd is the running init. Without
    // it, systemctl (installed in many containers) only fails after trying to connect.
    if !exists(root, "/run/systemd/system").await {
        return Facts::new();
    }
    match command::run(program, ARGS, timeout).await {
        Some(output) => parse(&output),
        None => Facts::new(),
    }
}

fn parse(output: &str) -> Facts {
    let mut facts = Facts::new();
    insert(&mut facts, "capability.systemd", "yes");
    for line in output.lines() {
        let mut words = line.split_whitespace().peekable();
        // Some systemd versions mark failed and not-found units with a leading `●` (or `*`
        // outside a UTF-8 locale, `×` in newer releases) even with --plain: a word with no
        // letters or digits is such a marker, never a unit name.
        if words.peek().is_some_and(|w| !w.chars().any(char::is_alphanumeric)) {
            words.next();
        }
        let (Some(name), Some(load), Some(active), Some(sub)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        insert(&mut facts, format!("unit.{name}"), format!("{load}/{active}/{sub}"));
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testutil::{fake_program, fixture_root};

    /// systemd 252 (Debian 12), with the `●` markers older versions print despite --plain.
    const LIST_UNITS: &str = "\
apparmor.service                       loaded    active   exited  Load AppArmor profiles
cron.service                           loaded    active   running Regular background program processing daemon
● jellyfin.service                     loaded    failed   failed  Jellyfin Media Server
nginx.service                          loaded    active   running A high performance web server and a reverse proxy server
● plymouth-start.service               not-found inactive dead    plymouth-start.service
postgresql@15-main.service             loaded    active   running PostgreSQL Cluster 15-main
rsync.service                          loaded    inactive dead    fast remote file copy program daemon
systemd-journald.service               loaded    active   running Journal Service
";

    /// systemd 255 (Ubuntu 24.04): --plain drops the markers.
    const LIST_UNITS_PLAIN: &str = "\
pihole-FTL.service loaded active running Pi-hole FTL
redis-server.service loaded failed failed Advanced key-value store
";

    #[test]
    fn parses_both_output_styles() {
        let facts = parse(LIST_UNITS);
        assert_eq!(facts["unit.nginx.service"], "loaded/active/running");
        assert_eq!(facts["unit.jellyfin.service"], "loaded/failed/failed");
        assert_eq!(facts["unit.plymouth-start.service"], "not-found/inactive/dead");
        assert_eq!(facts["unit.postgresql@15-main.service"], "loaded/active/running");
        assert_eq!(facts["unit.apparmor.service"], "loaded/active/exited");
        assert_eq!(facts["capability.systemd"], "yes");
        assert_eq!(facts.len(), 9);
        assert!(facts.keys().all(|k| !k.contains('●')));

        let plain = parse(LIST_UNITS_PLAIN);
        assert_eq!(plain["unit.redis-server.service"], "loaded/failed/failed");
        assert_eq!(plain["unit.pihole-FTL.service"], "loaded/active/running");
        assert_eq!(
            parse("* cron.service loaded active running x\n")["unit.cron.service"],
            "loaded/active/running"
        );
    }

    #[tokio::test]
    async fn runs_systemctl_only_on_systemd_hosts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let systemctl = fake_program(dir.path(), "systemctl", ARGS, LIST_UNITS).await;

        let booted = fixture_root(&[("/run/systemd/system/", "")]).await;
        let facts = collect(booted.path(), &systemctl, Duration::from_secs(10)).await;
        assert_eq!(facts, parse(LIST_UNITS));

        let not_booted = fixture_root(&[]).await;
        assert!(collect(not_booted.path(), &systemctl, Duration::from_secs(10)).await.is_empty());

        // A systemctl that rejects the arguments, or none at all: no keys, not even the capability.
        let picky = fake_program(dir.path(), "systemctl-picky", &["list-units"], LIST_UNITS).await;
        assert!(collect(booted.path(), &picky, Duration::from_secs(10)).await.is_empty());
        let missing = dir.path().join("no-systemctl");
        assert!(collect(booted.path(), &missing, Duration::from_secs(10)).await.is_empty());
    }
}
