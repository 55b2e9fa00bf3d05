//! Typed operations end to end: a real controller, a real agent, the job machinery, the CLI.
//!
//! Services: systemd does not run in CI, so these tests point the agent's `systemctl` at a
//! stand-in script (the agent's configured tool path, which is what "first on PATH" would pick)
//! that accepts only the exact argv the agent must send and replays output captured from
//! systemd 252 on Debian 12. Files and network checks run for real: temp directories, loopback
//! listeners, DNS for localhost.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tailops_agent::ops::{FilePolicy, OpsConfig};
use tailops_proto::v1;
use tailops_tests::*;
use tonic::Code;

const STATUS_ARGS: &str = "show --no-pager --property=Id,Description,LoadState,ActiveState,SubState,UnitFileState,MainPID,MemoryCurrent,NRestarts,ActiveEnterTimestamp,FragmentPath --";

/// A `systemctl` that knows `nginx.service` (active) and nothing else, records every call to
/// `calls.log`, and fails on any argv it was not written for.
async fn fake_systemctl(dir: &Path) -> PathBuf {
    let script = dir.join("systemctl");
    let log = dir.join("calls.log");
    let body = format!(
        r#"#!/bin/sh
echo "$*" >> '{log}'
case "$*" in
  "list-units --type=service --all --no-legend --plain --no-pager")
    printf '%s\n' 'cron.service loaded active running Regular background program processing daemon' \
      'nginx.service loaded failed failed A high performance web server'
    ;;
  "{status} nginx.service")
    printf '%s\n' Id=nginx.service 'Description=A high performance web server' LoadState=loaded \
      ActiveState=active SubState=running UnitFileState=enabled MainPID=4242
    ;;
  "{status} "*)
    printf '%s\n' "Id=$(echo "$*" | sed 's/.* -- //')" LoadState=not-found ActiveState=inactive
    ;;
  "restart -- nginx.service") ;;
  *) echo "unexpected argv: $*" >&2; exit 64 ;;
esac
"#,
        log = log.display(),
        status = STATUS_ARGS,
    );
    stand_in(&script, &body).await;
    script
}

#[tokio::test]
async fn services_are_listed_checked_and_restarted_with_a_dry_run_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let systemctl = fake_systemctl(dir.path()).await;
    let controller = TestController::start().await;
    let ops = OpsConfig { systemctl, ..OpsConfig::default() };
    let _agent = controller.agent_with("svc", &[], None, ops).await;

    let (state, result) = run_op(&controller, "svc", "service.list", &[], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let list = op_output(&result);
    assert_eq!(list.records.len(), 2);
    assert_eq!(field(&list.records[1], "unit"), "nginx.service");
    assert_eq!(field(&list.records[1], "active"), "failed");

    // A dry run checks the unit and says what it would run, and runs nothing else.
    let (state, result) =
        run_op(&controller, "svc", "service.restart", &[("unit", "nginx.service")], true).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let plan = op_output(&result);
    assert_eq!(plan.plan, vec!["systemctl restart -- nginx.service"]);
    assert!(plan.summary.starts_with("would run: systemctl restart -- nginx.service"), "{}", plan.summary);
    assert!(!calls(dir.path()).await.iter().any(|c| c.starts_with("restart")), "the dry run restarted");

    let (state, result) =
        run_op(&controller, "svc", "service.restart", &[("unit", "nginx.service")], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert!(calls(dir.path()).await.contains(&"restart -- nginx.service".to_owned()));
    assert!(
        op_output(&result).summary.starts_with("restart: nginx.service is active"),
        "{}",
        op_output(&result).summary
    );

    // A unit the host does not have is refused before anything runs.
    let before = calls(dir.path()).await.len();
    let (state, result) =
        run_op(&controller, "svc", "service.restart", &[("unit", "ghost.service")], false).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.error.contains("unknown unit \"ghost.service\""), "{}", result.error);
    let after = calls(dir.path()).await;
    assert_eq!(after.len(), before + 1, "only the lookup ran: {after:?}");
    controller.stop().await;
}

#[tokio::test]
async fn injection_and_unknown_parameters_are_refused_before_a_job_exists() {
    let controller = TestController::start().await;
    let _agent = controller.agent_with("h", &[], None, OpsConfig::default()).await;
    let mut fleet = controller.fleet().await;
    for (name, params) in [
        ("service.restart", vec![("unit", "--now")]),
        ("service.restart", vec![("unit", "nginx; reboot")]),
        ("service.restart", vec![("unit", "nginx"), ("extra", "1")]),
        ("net.ping", vec![("host", "-oProxyCommand=sh")]),
        ("file.read", vec![("path", "relative/file")]),
        ("service.obliterate", vec![]),
    ] {
        let err = fleet.run_job(op_request("h", name, &params, false)).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{name} {params:?}: {}", err.message());
    }
    let jobs = fleet.list_jobs(v1::ListJobsRequest { limit: 10 }).await.expect("jobs").into_inner().jobs;
    assert!(jobs.is_empty(), "no refused request created a job");

    // The CLI refuses the same things itself, naming what it expected.
    let profile = controller.admin_profile_file().await;
    let out = tailopsctl(&profile, &["op", "service.restart", "--host", "h", "unit=-x"]).await;
    assert!(!out.status.success());
    assert!(
        tailops_tests::text(&out.stderr).contains("would be read as an option"),
        "{}",
        tailops_tests::text(&out.stderr)
    );
    let out = tailopsctl(&profile, &["op", "service.status", "--host", "h"]).await;
    assert!(tailops_tests::text(&out.stderr).contains("needs unit="), "{}", tailops_tests::text(&out.stderr));
    controller.stop().await;
}

#[tokio::test]
async fn systemd_missing_is_reported_as_not_available() {
    let controller = TestController::start().await;
    let ops = OpsConfig { systemctl: "/nonexistent/systemctl".into(), ..OpsConfig::default() };
    let _agent = controller.agent_with("bare", &[], None, ops).await;
    let (state, result) = run_op(&controller, "bare", "service.status", &[("unit", "ssh")], false).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.not_available);
    assert!(result.error.starts_with("not available on this host: systemctl"), "{}", result.error);
    controller.stop().await;
}

/// A base directory with a log, a key file, a symlink escaping to a sibling directory named like
/// the base plus a suffix, and a nested tree to search.
async fn file_tree(root: &Path) -> (PathBuf, PathBuf) {
    let base = root.join("log");
    let sibling = root.join("logX");
    tokio::fs::create_dir_all(base.join("app/old")).await.expect("mkdir");
    tokio::fs::create_dir_all(&sibling).await.expect("mkdir");
    let lines: String = (1..=500).map(|i| format!("event {i}\n")).collect();
    tokio::fs::write(base.join("app/app.log"), &lines).await.expect("write");
    tokio::fs::write(base.join("app/old/app.log.1"), "old\n").await.expect("write");
    tokio::fs::write(base.join("app/server.pem"), "-----BEGIN PRIVATE KEY-----\n").await.expect("write");
    tokio::fs::write(sibling.join("secret.txt"), "nope\n").await.expect("write");
    tokio::fs::symlink(sibling.join("secret.txt"), base.join("app/escape.log")).await.expect("symlink");
    (base.canonicalize().expect("canonical"), sibling)
}

#[tokio::test]
async fn files_are_read_only_under_base_directories_and_never_from_the_deny_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, sibling) = file_tree(dir.path()).await;
    let controller = TestController::start().await;
    let ops = OpsConfig {
        files: FilePolicy { observe_roots: vec![base.clone()], base_dirs: vec![base.clone()], deny: vec![] },
        ..OpsConfig::default()
    };
    let _agent = controller.agent_with("files", &[], None, ops).await;
    let path = |p: &str| base.join(p).display().to_string();

    let (state, result) =
        run_op(&controller, "files", "file.tail", &[("path", &path("app/app.log")), ("lines", "2")], false)
            .await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let tail = op_output(&result);
    assert_eq!(
        tail.records.iter().map(|r| field(r, "line")).collect::<Vec<_>>(),
        vec!["event 499", "event 500"]
    );

    let (_, result) = run_op(
        &controller,
        "files",
        "file.read",
        &[("path", &path("app/app.log")), ("offset", "8"), ("length", "7")],
        false,
    )
    .await;
    assert_eq!(field(&op_output(&result).records[0], "content"), "event 2");

    let (_, result) =
        run_op(&controller, "files", "file.search", &[("path", &path("")), ("pattern", "*.log*")], false)
            .await;
    let found: Vec<String> = op_output(&result).records.iter().map(|r| field(r, "path")).collect();
    assert!(found.contains(&path("app/app.log")) && found.contains(&path("app/old/app.log.1")), "{found:?}");
    assert!(!found.iter().any(|p| p.ends_with("server.pem")), "denied files are not even listed: {found:?}");

    let (_, result) = run_op(&controller, "files", "file.list", &[("path", &path("app"))], false).await;
    let listing = op_output(&result);
    let pem = listing.records.iter().find(|r| field(r, "name") == "server.pem").expect("listed by name");
    assert_eq!(field(pem, "denied"), "true");

    // Refusals: the deny list, a symlink out, a sibling whose name only starts like the base,
    // `..` out of the base, and a file outside every base.
    for (p, why) in [
        (path("app/server.pem"), "deny list"),
        (path("app/escape.log"), "symbolic link"),
        (sibling.join("secret.txt").display().to_string(), "outside the allowed directories"),
        (format!("{}/../logX/secret.txt", base.display()), "outside the allowed directories"),
        ("/etc/hostname".to_owned(), "outside the allowed directories"),
    ] {
        let (state, result) = run_op(&controller, "files", "file.read", &[("path", &p)], false).await;
        assert_eq!(state, v1::TargetState::Failed, "{p}");
        assert!(result.error.starts_with("refused:") && result.error.contains(why), "{p}: {}", result.error);
        assert!(result.output.is_none(), "{p}: nothing read");
    }
    controller.stop().await;
}

#[tokio::test]
async fn network_checks_run_from_the_host() {
    let controller = TestController::start().await;
    let _agent = controller.agent_with("net", &[], None, OpsConfig::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();

    let (state, result) =
        run_op(&controller, "net", "net.port", &[("host", "127.0.0.1"), ("port", &port)], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert!(
        op_output(&result).summary.starts_with(&format!("127.0.0.1:{port} open")),
        "{}",
        op_output(&result).summary
    );

    let (_, result) = run_op(&controller, "net", "net.sockets", &[], false).await;
    let locals: Vec<String> = op_output(&result).records.iter().map(|r| field(r, "local")).collect();
    assert!(locals.contains(&format!("127.0.0.1:{port}")), "{locals:?}");

    drop(listener);
    let (_, result) = run_op(
        &controller,
        "net",
        "net.port",
        &[("host", "127.0.0.1"), ("port", &port), ("timeout", "2s")],
        false,
    )
    .await;
    assert!(op_output(&result).summary.contains("closed"), "{}", op_output(&result).summary);

    let (_, result) = run_op(&controller, "net", "net.dns", &[("name", "localhost")], false).await;
    assert!(op_output(&result).records.iter().any(|r| field(r, "value") == "127.0.0.1"));

    let (_, result) = run_op(&controller, "net", "net.interfaces", &[], false).await;
    let mut kernel = tokio::fs::read_dir("/sys/class/net").await.expect("sysfs");
    let mut names = Vec::new();
    while let Some(e) = kernel.next_entry().await.expect("entry") {
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    let listed: Vec<String> = op_output(&result).records.iter().map(|r| field(r, "interface")).collect();
    // Container veths come and go with other tests running in parallel.
    assert!(
        listed.iter().filter(|i| !i.starts_with("veth")).all(|i| names.contains(i)),
        "{listed:?} vs {names:?}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn risk_tiers_decide_who_may_run_what() {
    let dir = tempfile::tempdir().expect("tempdir");
    let systemctl = fake_systemctl(dir.path()).await;
    let controller = TestController::start().await;
    let _agent = controller
        .agent_with("web", &[("env", "prod")], None, OpsConfig { systemctl, ..OpsConfig::default() })
        .await;
    let viewer = controller.principal("user", "vic", "viewer", None).await;
    let mut as_viewer = controller.fleet_as(&viewer).await;

    // Observe operations, and dry runs of anything, are open to a viewer...
    let events =
        as_viewer.run_job(op_request("web", "service.status", &[("unit", "nginx.service")], false)).await;
    assert!(events.is_ok(), "{events:?}");
    collect_events(events.expect("ok").into_inner()).await;
    let dry =
        as_viewer.run_job(op_request("web", "service.restart", &[("unit", "nginx.service")], true)).await;
    collect_events(dry.expect("a dry run is observe").into_inner()).await;
    // ...changing anything is not.
    let err = as_viewer
        .run_job(op_request("web", "service.restart", &[("unit", "nginx.service")], false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(!calls(dir.path()).await.iter().any(|c| c.starts_with("restart")));

    // The audit log names the operation and its parameters.
    let audit = controller
        .audit()
        .await
        .list_audit(v1::ListAuditRequest { limit: 50, ..Default::default() })
        .await
        .expect("audit")
        .into_inner();
    let json = format!("{:?}", audit.entries);
    assert!(json.contains("service.restart") && json.contains("nginx.service"), "{json}");
    controller.stop().await;
}

#[tokio::test]
async fn the_cli_lists_the_catalog_and_renders_results() {
    let controller = TestController::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, _) = file_tree(dir.path()).await;
    let ops = OpsConfig {
        files: FilePolicy { observe_roots: vec![base.clone()], base_dirs: vec![base.clone()], deny: vec![] },
        ..OpsConfig::default()
    };
    let _agent = controller.agent_with("cli", &[], None, ops).await;
    let profile = controller.admin_profile_file().await;

    let ls = tailopsctl(&profile, &["op", "ls", "service"]).await;
    let out = tailops_tests::text(&ls.stdout);
    assert!(out.contains("service.restart") && out.contains("control (dry-run)"), "{out}");
    let json: Value = serde_json::from_slice(&tailopsctl(&profile, &["op", "ls", "-o", "json"]).await.stdout)
        .expect("json");
    let names: Vec<&str> =
        json.as_array().expect("array").iter().filter_map(|o| o["name"].as_str()).collect();
    assert_eq!(names.len(), tailops_ops::catalog().count());

    let log = base.join("app/app.log").display().to_string();
    let tail =
        tailopsctl(&profile, &["op", "file.tail", "--host", "cli", &format!("path={log}"), "lines=1"]).await;
    assert!(tail.status.success(), "{}", tailops_tests::text(&tail.stderr));
    assert!(
        tailops_tests::text(&tail.stdout).contains("[cli] event 500"),
        "{}",
        tailops_tests::text(&tail.stdout)
    );

    let json =
        tailopsctl(&profile, &["op", "file.stat", "--host", "cli", &format!("path={log}"), "-o", "json"])
            .await;
    let finished: Vec<Value> = tailops_tests::text(&json.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "finished")
        .collect();
    let record = &finished[0]["result"]["output"]["records"][0];
    let size = tokio::fs::metadata(&log).await.expect("metadata").len();
    assert_eq!(record["size"].as_u64(), Some(size));
    assert_eq!(record["type"], "file");

    let refused = tailopsctl(&profile, &["op", "file.read", "--host", "cli", "path=/etc/shadow"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        tailops_tests::text(&refused.stderr).contains("refused"),
        "{}",
        tailops_tests::text(&refused.stderr)
    );
    controller.stop().await;
}

/// `ping` comes from the system (`.ci/deps` installs it in CI); elsewhere the test says why it
/// did not run.
#[tokio::test]
async fn ping_reaches_loopback_and_a_missing_tool_is_not_available() {
    let controller = TestController::start().await;
    let ops = OpsConfig { dig: "/nonexistent/dig".into(), ..OpsConfig::default() };
    let _agent = controller.agent_with("p", &[], None, ops).await;

    let (state, result) =
        run_op(&controller, "p", "net.dns", &[("name", "localhost"), ("type", "MX")], false).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.not_available && result.error.contains("need dig"), "{}", result.error);

    let have_ping = tokio::process::Command::new("sh")
        .args(["-c", "command -v ping"])
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !have_ping {
        assert!(
            std::env::var("CI").is_err(),
            "ping is missing under CI: .ci/deps should have installed iputils-ping"
        );
        eprintln!("skipped: ping is not installed here (apt install iputils-ping)");
        controller.stop().await;
        return;
    }
    let (state, result) =
        run_op(&controller, "p", "net.ping", &[("host", "127.0.0.1"), ("count", "2")], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let record = &op_output(&result).records[0];
    assert_eq!((field(record, "sent"), field(record, "received")), ("2".to_owned(), "2".to_owned()));
    controller.stop().await;
}

#[tokio::test]
async fn friendly_commands_are_short_forms_of_operations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let systemctl = fake_systemctl(dir.path()).await;
    let controller = TestController::start().await;
    let _agent =
        controller.agent_with("svc", &[], None, OpsConfig { systemctl, ..OpsConfig::default() }).await;
    let profile = controller.admin_profile_file().await;

    let ls = tailopsctl(&profile, &["svc", "ls", "--host", "svc"]).await;
    assert!(ls.status.success(), "{}", tailops_tests::text(&ls.stderr));
    assert!(tailops_tests::text(&ls.stdout).contains("nginx.service"), "{}", tailops_tests::text(&ls.stdout));

    let dry = tailopsctl(&profile, &["svc", "restart", "nginx.service", "--host", "svc", "--dry-run"]).await;
    assert!(dry.status.success(), "{}", tailops_tests::text(&dry.stderr));
    assert!(
        tailops_tests::text(&dry.stdout).contains("[svc] would run: systemctl restart -- nginx.service"),
        "{}",
        tailops_tests::text(&dry.stdout)
    );
    assert!(!calls(dir.path()).await.iter().any(|c| c.starts_with("restart")));

    let wrong = tailopsctl(&profile, &["svc", "explode", "nginx", "--host", "svc"]).await;
    assert!(!wrong.status.success());
    assert!(
        tailops_tests::text(&wrong.stderr).contains("unknown operation \"service.explode\""),
        "{}",
        tailops_tests::text(&wrong.stderr)
    );
    controller.stop().await;
}

#[tokio::test]
async fn logs_and_check_commands_run_their_operations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, _) = file_tree(dir.path()).await;
    let controller = TestController::start().await;
    let ops = OpsConfig {
        files: FilePolicy { observe_roots: vec![base.clone()], base_dirs: vec![base.clone()], deny: vec![] },
        ..OpsConfig::default()
    };
    let _agent = controller.agent_with("box", &[], None, ops).await;
    let profile = controller.admin_profile_file().await;

    let log = base.join("app/app.log").display().to_string();
    let out = tailopsctl(&profile, &["logs", "--file", &log, "-n", "2", "--host", "box"]).await;
    assert!(out.status.success(), "{}", tailops_tests::text(&out.stderr));
    let stdout = tailops_tests::text(&out.stdout);
    assert!(
        stdout.contains("event 499") && stdout.contains("event 500") && !stdout.contains("event 498"),
        "{stdout}"
    );

    let check = tailopsctl(&profile, &["check", "--host", "box", "-o", "json"]).await;
    let finished: Vec<Value> = tailops_tests::text(&check.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "finished")
        .collect();
    let checks: Vec<&str> = finished[0]["result"]["output"]["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["check"].as_str())
        .collect();
    assert!(checks.contains(&"ssh_root_login") && checks.contains(&"uid0_accounts"), "{checks:?}");
    controller.stop().await;
}
