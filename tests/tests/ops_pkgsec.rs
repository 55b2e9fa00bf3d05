//! `package.*` and `security.*` operations end to end: a real controller, a real agent, the job
//! machinery.
//!
//! - Reading package state runs the host's real apt (`apt list --upgradable`, and the
//!   simulation `apt-get -s install hello`, which changes nothing); those tests skip with a
//!   message where apt or the package lists are missing, except under CI.
//! - Anything that would change the host runs a stand-in `apt-get` / `dnf` (the agent's
//!   configured tool path) that accepts only the exact argv and environment the agent must use,
//!   and records every call.
//! - Security checks run once on a fixture root and once on the real one; the secrets scan on
//!   planted fake secrets; vulnerability scanners are stand-ins (neither is installed here).

use std::path::{Path, PathBuf};

use tailops_agent::ops::{FilePolicy, OpsConfig};
use tailops_proto::v1;
use tailops_tests::*;
use tonic::Code;

const CONFOLD: &str = "-o Dpkg::Options::=--force-confold";

async fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    stand_in(&path, &format!("#!/bin/sh\n{body}")).await;
    path
}

/// An `apt-get` that knows `hello` (not installed) and `bash` (upgradable), insists on
/// `DEBIAN_FRONTEND=noninteractive`, and fails on any argv it was not written for.
async fn fake_apt_get(dir: &Path) -> PathBuf {
    let log = dir.join("calls.log").display().to_string();
    let body = format!(
        r#"echo "apt-get $*" >> '{log}'
[ "$DEBIAN_FRONTEND" = noninteractive ] || {{ echo "E: DEBIAN_FRONTEND is '$DEBIAN_FRONTEND'" >&2; exit 65; }}
case "$*" in
  "-s {CONFOLD} install -- hello")
    printf '%s\n' 'NOTE: This is only a simulation!' 'Inst hello (2.10-3 Debian:12.15/oldstable [amd64])' 'Conf hello (2.10-3 Debian:12.15/oldstable [amd64])' ;;
  "-y {CONFOLD} install -- hello")
    printf '%s\n' 'Unpacking hello (2.10-3) ...' 'Setting up hello (2.10-3) ...' ;;
  "-s {CONFOLD} upgrade")
    printf '%s\n' 'Inst bash [5.2.15-2+b8] (5.2.15-2+b13 Debian:12.15/oldstable [amd64])' 'Conf bash (5.2.15-2+b13 Debian:12.15/oldstable [amd64])' ;;
  "-y {CONFOLD} upgrade")
    printf '%s\n' 'Setting up bash (5.2.15-2+b13) ...' ;;
  "-s {CONFOLD} install --only-upgrade -- bash")
    printf '%s\n' 'Inst bash [5.2.15-2+b8] (5.2.15-2+b13 Debian:12.15/oldstable [amd64])' ;;
  *"install -- nosuch") echo "E: Unable to locate package nosuch" >&2; exit 100 ;;
  *) echo "unexpected argv: $*" >&2; exit 64 ;;
esac
"#
    );
    script(dir, "apt-get", &body).await
}

/// A `dnf` with two updates (exit status 100, as dnf reports them) that upgrades `curl`.
async fn fake_dnf(dir: &Path) -> PathBuf {
    let log = dir.join("calls.log").display().to_string();
    let body = format!(
        r#"echo "dnf $*" >> '{log}'
case "$*" in
  "check-update --quiet")
    printf '%s\n' '' 'curl.x86_64                               8.6.0-10.fc40                  updates' \
      'kernel-core.x86_64                        6.11.5-200.fc40                updates'
    exit 100 ;;
  "-y upgrade -- curl")
    printf '%s\n' 'Upgraded:' '  curl-8.6.0-10.fc40.x86_64' '' 'Complete!' ;;
  *) echo "unexpected argv: $*" >&2; exit 64 ;;
esac
"#
    );
    script(dir, "dnf", &body).await
}

/// Whether the host has apt with package lists; panics under CI when it does not.
async fn apt_with_lists() -> bool {
    let ok = sh("command -v apt >/dev/null && command -v apt-get >/dev/null && apt-cache policy hello | grep -q 'Candidate: [0-9]'")
        .await
        .status
        .success();
    if !ok {
        assert!(std::env::var("CI").is_err(), "CI=true but apt or its package lists are missing");
        eprintln!("skipped: no apt with package lists here");
    }
    ok
}

/// The real apt: the updates listed are the ones apt lists, and the `hello` install dry run
/// really runs the simulation (`apt-get -s`), which changes nothing.
#[tokio::test]
async fn real_apt_lists_updates_and_simulates_an_install() {
    if !apt_with_lists().await {
        return;
    }
    let controller = TestController::start().await;
    let _agent = controller.agent_with("deb", &[], None, OpsConfig::default()).await;

    let (state, result) = run_op(&controller, "deb", "package.updates", &[], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    assert_eq!(out.columns, ["name", "current", "available", "source"]);
    assert_eq!(out.plan, ["apt list --upgradable"]);
    let direct = sh("LC_ALL=C apt list --upgradable 2>/dev/null | grep / | cut -d/ -f1").await;
    let expected: Vec<String> = text(&direct.stdout).lines().map(str::to_owned).collect();
    let listed: Vec<String> = out.records.iter().map(|r| field(r, "name")).collect();
    assert_eq!(listed, expected);
    for r in &out.records {
        assert!(!field(r, "available").is_empty() && !field(r, "source").is_empty(), "{r:?}");
    }

    if sh("dpkg -s hello >/dev/null 2>&1").await.status.success() {
        eprintln!("skipped the install simulation: hello is already installed");
        controller.stop().await;
        return;
    }
    let (state, result) = run_op(&controller, "deb", "package.install", &[("packages", "hello")], true).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    assert_eq!(out.plan, [format!("apt-get -y {CONFOLD} install -- hello")]);
    let hello = out.records.iter().find(|r| field(r, "name") == "hello").expect("hello would be installed");
    assert_eq!(field(hello, "action"), "install");
    assert!(!field(hello, "available").is_empty());
    assert!(
        out.summary.contains(&format!("simulated with apt-get -s {CONFOLD} install -- hello")),
        "{}",
        out.summary
    );
    assert!(!sh("dpkg -s hello >/dev/null 2>&1").await.status.success(), "the dry run installed hello");
    controller.stop().await;
}

#[tokio::test]
async fn apt_upgrades_and_installs_run_the_exact_argv_after_a_simulated_dry_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let apt_get = fake_apt_get(dir.path()).await;
    let controller = TestController::start().await;
    let _agent = controller.agent_with("deb", &[], None, OpsConfig { apt_get, ..OpsConfig::default() }).await;

    let (state, result) = run_op(&controller, "deb", "package.install", &[("packages", "hello")], true).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    assert_eq!(out.plan, [format!("apt-get -y {CONFOLD} install -- hello")]);
    assert_eq!(out.records.len(), 1);
    assert_eq!(field(&out.records[0], "action"), "install");
    assert_eq!(field(&out.records[0], "available"), "2.10-3");
    assert_eq!(
        calls(dir.path()).await,
        [format!("apt-get -s {CONFOLD} install -- hello")],
        "only the simulation ran"
    );

    let (state, result) =
        run_op(&controller, "deb", "package.install", &[("packages", "hello")], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    assert_eq!(out.summary, "install: 1 package(s) changed");
    assert_eq!(field(&out.records[0], "name"), "hello");
    assert_eq!(
        calls(dir.path()).await.last().map(String::as_str),
        Some(format!("apt-get -y {CONFOLD} install -- hello").as_str())
    );

    let (_, result) = run_op(&controller, "deb", "package.upgrade", &[], true).await;
    let out = op_output(&result);
    assert_eq!(out.plan, [format!("apt-get -y {CONFOLD} upgrade")]);
    assert_eq!(
        (
            field(&out.records[0], "action"),
            field(&out.records[0], "current"),
            field(&out.records[0], "available")
        ),
        ("upgrade".to_owned(), "5.2.15-2+b8".to_owned(), "5.2.15-2+b13".to_owned())
    );
    let (state, result) = run_op(&controller, "deb", "package.upgrade", &[("packages", "bash")], true).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert_eq!(op_output(&result).plan, [format!("apt-get -y {CONFOLD} install --only-upgrade -- bash")]);
    let (state, result) = run_op(&controller, "deb", "package.upgrade", &[], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert_eq!(op_output(&result).records.len(), 1);

    // apt's own refusal comes back as the failure.
    let (state, result) =
        run_op(&controller, "deb", "package.install", &[("packages", "nosuch")], true).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.error.contains("Unable to locate package nosuch"), "{}", result.error);

    let all = calls(dir.path()).await;
    assert!(!all.iter().any(|c| c.contains("unexpected")), "{all:?}");
    assert_eq!(all.iter().filter(|c| c.starts_with("apt-get -y")).count(), 2, "two real runs: {all:?}");
    controller.stop().await;
}

#[tokio::test]
async fn dnf_is_used_where_apt_is_missing_and_neither_is_not_available() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dnf = fake_dnf(dir.path()).await;
    let controller = TestController::start().await;
    let ops = OpsConfig { apt_get: "/nonexistent/apt-get".into(), dnf, ..OpsConfig::default() };
    let _rpm = controller.agent_with("rpm", &[], None, ops).await;
    let none = OpsConfig {
        apt_get: "/nonexistent/apt-get".into(),
        dnf: "/nonexistent/dnf".into(),
        ..OpsConfig::default()
    };
    let _bare = controller.agent_with("bare", &[], None, none).await;

    let (state, result) = run_op(&controller, "rpm", "package.updates", &[], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    let names: Vec<String> = out.records.iter().map(|r| field(r, "name")).collect();
    assert_eq!(names, ["curl.x86_64", "kernel-core.x86_64"]);
    assert_eq!(field(&out.records[0], "source"), "updates");

    // dnf has no simulation here: the dry run runs nothing and says what would run.
    let (state, result) = run_op(&controller, "rpm", "package.upgrade", &[("packages", "curl")], true).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert_eq!(op_output(&result).plan, ["dnf -y upgrade -- curl"]);
    assert_eq!(calls(dir.path()).await, ["dnf check-update --quiet"]);
    let (state, result) = run_op(&controller, "rpm", "package.upgrade", &[("packages", "curl")], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert_eq!(field(&op_output(&result).records[0], "name"), "curl-8.6.0-10.fc40.x86_64");
    assert_eq!(calls(dir.path()).await.last().map(String::as_str), Some("dnf -y upgrade -- curl"));

    let (state, result) = run_op(&controller, "bare", "package.updates", &[], false).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.not_available, "{}", result.error);
    assert!(result.error.contains("apt-get") && result.error.contains("dnf"), "{}", result.error);
    controller.stop().await;
}

#[tokio::test]
async fn injection_in_package_names_and_images_is_refused_before_a_job_exists() {
    let controller = TestController::start().await;
    let _agent = controller.agent_with("h", &[], None, OpsConfig::default()).await;
    let mut fleet = controller.fleet().await;
    for (name, params) in [
        ("package.install", vec![("packages", "-o,APT::x")]),
        ("package.install", vec![("packages", "a;b")]),
        ("package.install", vec![("packages", "hello --reinstall")]),
        ("package.install", vec![("packages", "hello,-y")]),
        ("package.install", vec![]),
        ("package.upgrade", vec![("packages", "$(reboot)")]),
        ("security.vulnscan", vec![("image", "dir:/etc")]),
        ("security.vulnscan", vec![("image", "--config=/x")]),
        ("security.secrets", vec![("path", "relative")]),
        ("security.checks", vec![("root", "/tmp")]),
    ] {
        let err = fleet.run_job(op_request("h", name, &params, false)).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{name} {params:?}: {}", err.message());
    }
    let jobs = fleet.list_jobs(v1::ListJobsRequest { limit: 10 }).await.expect("jobs").into_inner().jobs;
    assert!(jobs.is_empty(), "no refused request created a job");
    controller.stop().await;
}

#[tokio::test]
async fn risk_tiers_keep_viewers_and_operators_from_installing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let apt_get = fake_apt_get(dir.path()).await;
    let dnf = fake_dnf(dir.path()).await;
    let controller = TestController::start().await;
    // dnf for the updates list keeps this test independent of the host's apt.
    let ops = OpsConfig { apt_get: "/nonexistent/apt-get".into(), dnf, ..OpsConfig::default() };
    let _rpm = controller.agent_with("rpm", &[], None, ops).await;
    let _deb = controller.agent_with("deb", &[], None, OpsConfig { apt_get, ..OpsConfig::default() }).await;
    let viewer = controller.principal("user", "v", "viewer", None).await;
    let operator = controller.principal("user", "o", "operator", None).await;
    let mut as_viewer = controller.fleet_as(&viewer).await;

    let updates = as_viewer.run_job(op_request("rpm", "package.updates", &[], false)).await;
    collect_events(updates.expect("updates are observe").into_inner()).await;
    // A dry run changes nothing, so it is observe whatever it would change.
    let dry = as_viewer.run_job(op_request("deb", "package.upgrade", &[], true)).await;
    collect_events(dry.expect("a dry run is observe").into_inner()).await;
    let err = as_viewer
        .run_job(op_request("deb", "package.install", &[("packages", "hello")], false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    // Installing is admin: an operator (control) may not either.
    let err = controller
        .fleet_as(&operator)
        .await
        .run_job(op_request("deb", "package.upgrade", &[], false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let all = calls(dir.path()).await;
    assert!(!all.iter().any(|c| c.starts_with("apt-get -y")), "nothing was installed: {all:?}");
    assert!(all.contains(&format!("apt-get -s {CONFOLD} upgrade")), "{all:?}");
    controller.stop().await;
}

const CHECKS: &[&str] = &[
    "ssh_root_login",
    "ssh_password_auth",
    "uid0_accounts",
    "ip_forwarding",
    "world_writable",
    "firewall",
    "exposed_listeners",
];

fn statuses(out: &v1::OperationOutput) -> std::collections::BTreeMap<String, (String, String)> {
    out.records.iter().map(|r| (field(r, "check"), (field(r, "status"), field(r, "detail")))).collect()
}

#[tokio::test]
async fn security_checks_judge_a_fixture_root_and_run_on_the_real_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    for d in ["etc/ssh/sshd_config.d", "proc/sys/net/ipv4", "proc/net", "usr/bin", "bin"] {
        tokio::fs::create_dir_all(root.join(d)).await.expect("mkdir");
    }
    let write = |p: &str, t: &str| {
        let path = root.join(p);
        let t = t.to_owned();
        async move { tokio::fs::write(path, t).await.expect("write") }
    };
    write("etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin no\n").await;
    write("etc/ssh/sshd_config.d/10-bad.conf", "PermitRootLogin yes\nPasswordAuthentication no\n").await;
    write(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\ntoor:x:0:0::/root:/bin/sh\nal:x:1000:1000::/home/al:/bin/bash\n",
    )
    .await;
    write("proc/sys/net/ipv4/ip_forward", "1\n").await;
    write(
        "proc/net/tcp",
        "  sl  local_address rem_address   st\n   0: 00000000:0016 00000000:0000 0A 0\n   1: 0100007F:0277 00000000:0000 0A 0\n",
    )
    .await;
    write("etc/app.conf", "x=1\n").await;
    write("usr/bin/tool", "#!/bin/sh\n").await;
    assert!(sh(&format!("chmod 666 '{}/etc/app.conf'", root.display())).await.status.success());
    let tools = dir.path().join("tools");
    tokio::fs::create_dir_all(&tools).await.expect("mkdir");
    let ufw = script(&tools, "ufw", "[ \"$*\" = status ] && echo 'Status: active' || exit 64\n").await;
    let controller = TestController::start().await;
    let ops = OpsConfig { security_root: root.clone(), ufw, ..OpsConfig::default() };
    let _fixture = controller.agent_with("fixture", &[], None, ops).await;
    let _real = controller.agent_with("real", &[], None, OpsConfig::default()).await;

    let (state, result) = run_op(&controller, "fixture", "security.checks", &[], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    assert_eq!(out.columns, ["check", "status", "detail"]);
    let s = statuses(&out);
    assert_eq!(s["ssh_root_login"].0, "fail", "the included file's first value wins: {s:?}");
    assert_eq!(s["ssh_password_auth"].0, "pass");
    assert_eq!(s["uid0_accounts"], ("fail".into(), "accounts besides root with uid 0: toor".into()));
    assert_eq!(s["ip_forwarding"].0, "warn");
    assert_eq!(s["world_writable"], ("fail".into(), "/etc/app.conf".into()));
    assert_eq!(s["firewall"], ("pass".into(), "ufw is active".into()));
    assert_eq!(s["exposed_listeners"].0, "warn");
    assert!(s["exposed_listeners"].1.ends_with("0.0.0.0:22"), "loopback 631 is not listed: {s:?}");

    let (state, result) = run_op(&controller, "real", "security.checks", &[], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let s = statuses(&op_output(&result));
    let names: Vec<&str> = s.keys().map(String::as_str).collect();
    let mut expected = CHECKS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    for (name, (status, _)) in &s {
        assert!(["pass", "warn", "fail", "unknown"].contains(&status.as_str()), "{name}: {status}");
    }
    assert_ne!(s["uid0_accounts"].0, "unknown", "/etc/passwd is readable");
    controller.stop().await;
}

#[tokio::test]
async fn the_secrets_scan_finds_each_kind_redacts_it_and_stays_inside_the_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("srv");
    let outside = dir.path().join("srvX");
    tokio::fs::create_dir_all(base.join("app/deep")).await.expect("mkdir");
    tokio::fs::create_dir_all(base.join("home/.ssh")).await.expect("mkdir");
    tokio::fs::create_dir_all(&outside).await.expect("mkdir");
    let base = base.canonicalize().expect("canonical");
    let aws = "AKIAQWERTYUIOPASDF12";
    let ghp = "ghp_Zq3rT9vW2xY5aB7cD1eF4gH6iJ8kL0mN2pQ4";
    let pat = "github_pat_11AAAAAAA0bcdefghijklmnop_QRSTUVWXYZ0123456789abcdefghij";
    let slack = "xoxp-2948571234-5829104738-AbCdEfGh12345678";
    let password = "Tr0ub4dor&3-horse";
    let outside_key = "AKIAZZZZZZZZZZZZZZZZ";
    let write = |p: PathBuf, t: String| async move { tokio::fs::write(p, t).await.expect("write") };
    write(
        base.join("app/settings.ini"),
        format!("# settings\nAWS_ACCESS_KEY_ID={aws}\nDB_PASSWORD={password}\n"),
    )
    .await;
    write(base.join("app/deep/tokens.yml"), format!("github: {ghp}\nfine: {pat}\n\nslack: {slack}\n")).await;
    write(base.join("app/notes.txt"), "keys:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n".into())
        .await;
    write(base.join("app/server.pem"), "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\n".into()).await;
    write(base.join("home/.ssh/config"), format!("# {aws}\n")).await;
    write(outside.join("leak.txt"), format!("key={outside_key}\n")).await;
    tokio::fs::write(base.join("app/blob.bin"), [b"\0\x01AKIA".as_slice(), aws.as_bytes()].concat())
        .await
        .expect("write");
    tokio::fs::symlink(outside.join("leak.txt"), base.join("app/escape.txt")).await.expect("symlink");
    tokio::fs::symlink(&outside, base.join("app/escape-dir")).await.expect("symlink");

    let controller = TestController::start().await;
    let ops = OpsConfig {
        files: FilePolicy { observe_roots: vec![base.clone()], base_dirs: vec![base.clone()], deny: vec![] },
        ..OpsConfig::default()
    };
    let _agent = controller.agent_with("scan", &[], None, ops).await;
    let (state, result) =
        run_op(&controller, "scan", "security.secrets", &[("path", &base.display().to_string())], false)
            .await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    assert_eq!(out.columns, ["file", "line", "kind", "excerpt"]);
    let rows: Vec<(String, String, String, String)> = out
        .records
        .iter()
        .map(|r| {
            let file = field(r, "file");
            let rel = file.strip_prefix(&format!("{}/", base.display())).unwrap_or(&file).to_owned();
            (rel, field(r, "line"), field(r, "kind"), field(r, "excerpt"))
        })
        .collect();
    let row = |f: &str, l: &str, k: &str, e: &str| (f.to_owned(), l.to_owned(), k.to_owned(), e.to_owned());
    for expected in [
        row("app/settings.ini", "2", "aws access key", "AKIA…"),
        row("app/settings.ini", "3", "password assignment", "DB_PASSWORD=…"),
        row("app/deep/tokens.yml", "1", "github token", "ghp_…"),
        row("app/deep/tokens.yml", "2", "github token", "github_pat_…"),
        row("app/deep/tokens.yml", "4", "slack token", "xoxp-…"),
        row("app/notes.txt", "2", "private key", "-----BEGIN RSA PRIVATE KEY-----"),
        row("app/server.pem", "", "denied file (not read)", ""),
        row("home/.ssh", "", "denied directory (not read)", ""),
    ] {
        assert!(rows.contains(&expected), "{expected:?} not in {rows:#?}");
    }
    assert_eq!(rows.len(), 8, "nothing else (the binary file, the symlinks): {rows:#?}");
    assert!(
        out.summary.contains("2 symlink(s) not followed") && out.summary.contains("1 binary"),
        "{}",
        out.summary
    );
    let everything = format!("{result:?}");
    for secret in [aws, ghp, pat, slack, password, outside_key, "MIIE"] {
        assert!(!everything.contains(secret), "{secret} leaked into the result");
    }

    // The policy applies to the path asked for, too.
    let (state, result) =
        run_op(&controller, "scan", "security.secrets", &[("path", &outside.display().to_string())], false)
            .await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.error.starts_with("refused:"), "{}", result.error);
    controller.stop().await;
}

/// Trimmed from `trivy fs --quiet --format json` (Trivy 0.56).
const TRIVY_JSON: &str = r#"{"SchemaVersion":2,"Results":[{"Target":"requirements.txt","Vulnerabilities":[
{"VulnerabilityID":"CVE-2023-32681","PkgName":"requests","InstalledVersion":"2.25.0","FixedVersion":"2.31.0","Severity":"MEDIUM"},
{"VulnerabilityID":"CVE-2019-10906","PkgName":"jinja2","InstalledVersion":"2.10","FixedVersion":"2.10.1","Severity":"HIGH"},
{"VulnerabilityID":"CVE-2022-40897","PkgName":"setuptools","InstalledVersion":"40.5.0","FixedVersion":"65.5.1","Severity":"CRITICAL"}]}]}"#;

/// Trimmed from `grype nginx:1.27 -o json` (Grype 0.82).
const GRYPE_JSON: &str = r#"{"matches":[{"vulnerability":{"id":"CVE-2024-45490","severity":"Critical","fix":{"versions":["2.5.0-1+deb12u1"],"state":"fixed"}},"artifact":{"name":"libexpat1","version":"2.5.0-1","locations":[{"path":"/var/lib/dpkg/status"}]}}]}"#;

#[tokio::test]
async fn vulnerability_scans_use_trivy_or_grype_and_neither_is_not_available() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("srv");
    tokio::fs::create_dir_all(&base).await.expect("mkdir");
    let base = base.canonicalize().expect("canonical");
    let log = dir.path().join("calls.log").display().to_string();
    let trivy = script(
        dir.path(),
        "trivy",
        &format!(
            "echo \"trivy $*\" >> '{log}'\n[ \"$*\" = 'fs --quiet --format json -- {}' ] || {{ echo \"unexpected argv: $*\" >&2; exit 64; }}\ncat <<'JSON'\n{TRIVY_JSON}\nJSON\n",
            base.display()
        ),
    )
    .await;
    let grype = script(
        dir.path(),
        "grype",
        &format!(
            "echo \"grype $*\" >> '{log}'\n[ \"$*\" = '-o json -- nginx:1.27' ] || {{ echo \"unexpected argv: $*\" >&2; exit 64; }}\ncat <<'JSON'\n{GRYPE_JSON}\nJSON\n"
        ),
    )
    .await;
    let files = FilePolicy { observe_roots: vec![base.clone()], base_dirs: vec![base.clone()], deny: vec![] };
    let controller = TestController::start().await;
    let with_trivy = OpsConfig { trivy, grype: grype.clone(), files: files.clone(), ..OpsConfig::default() };
    let _t = controller.agent_with("t", &[], None, with_trivy).await;
    let with_grype = OpsConfig { trivy: "/nonexistent/trivy".into(), grype, ..OpsConfig::default() };
    let _g = controller.agent_with("g", &[], None, with_grype).await;
    let neither = OpsConfig {
        trivy: "/nonexistent/trivy".into(),
        grype: "/nonexistent/grype".into(),
        files,
        ..OpsConfig::default()
    };
    let _n = controller.agent_with("n", &[], None, neither).await;
    let path = base.display().to_string();

    let (state, result) =
        run_op(&controller, "t", "security.vulnscan", &[("path", &path), ("limit", "2")], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    let ids: Vec<String> = out.records.iter().map(|r| field(r, "id")).collect();
    assert_eq!(ids, ["CVE-2022-40897", "CVE-2019-10906"], "worst first, limited");
    assert_eq!(field(&out.records[0], "fixed"), "65.5.1");
    assert_eq!(
        out.summary,
        format!("trivy: 3 vulnerabilit(ies) in {path}: 1 CRITICAL, 1 HIGH, 1 MEDIUM; 2 worst listed")
    );

    let (state, result) =
        run_op(&controller, "g", "security.vulnscan", &[("image", "nginx:1.27")], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    assert_eq!(out.plan, ["grype -o json -- nginx:1.27"]);
    assert_eq!(
        (field(&out.records[0], "package"), field(&out.records[0], "severity")),
        ("libexpat1".to_owned(), "CRITICAL".to_owned())
    );

    let (state, result) = run_op(&controller, "n", "security.vulnscan", &[("path", &path)], false).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.not_available, "{}", result.error);
    assert!(result.error.contains("trivy") && result.error.contains("grype"), "{}", result.error);
    // A path outside the policy is refused before any scanner runs.
    let (state, result) = run_op(&controller, "t", "security.vulnscan", &[("path", "/etc")], false).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.error.starts_with("refused:"), "{}", result.error);
    let (state, result) = run_op(&controller, "t", "security.vulnscan", &[], false).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.error.contains("exactly one of path"), "{}", result.error);
    let all = calls(dir.path()).await;
    assert_eq!(all.len(), 2, "{all:?}");
    controller.stop().await;
}
