//! The `tailopsctl` binary against a real controller and agent.

use std::process::Output;

use tailops_tests::*;

async fn ctl(controller: &TestController, args: &[&str]) -> Output {
    tailopsctl(&controller.admin_profile_file().await, args).await
}

#[tokio::test]
async fn exec_streams_prefixed_output_and_exits_by_result() {
    let controller = TestController::start().await;
    let _a = controller.agent("alpha", &[("env", "test")]).await;

    let ok = ctl(&controller, &["exec", "--label", "env=test", "--", "echo", "hello world"]).await;
    assert!(ok.status.success(), "stderr: {}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("[alpha] hello world"), "stdout: {}", text(&ok.stdout));
    assert!(text(&ok.stderr).contains("1 succeeded"), "stderr: {}", text(&ok.stderr));

    let failed = ctl(&controller, &["exec", "--all", "--", "sh", "-c", "exit 3"]).await;
    assert_eq!(failed.status.code(), Some(1));
    assert!(text(&failed.stderr).contains("alpha: FAILED exit 3"), "stderr: {}", text(&failed.stderr));

    let json = ctl(&controller, &["exec", "--all", "--output", "json", "--", "echo", "x"]).await;
    assert!(json.status.success());
    let events: Vec<serde_json::Value> =
        text(&json.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(events.first().and_then(|e| e["event"].as_str()), Some("accepted"));
    assert_eq!(events.last().and_then(|e| e["event"].as_str()), Some("completed"));

    let timed_out = ctl(&controller, &["exec", "--all", "--timeout", "1s", "--", "sleep", "30"]).await;
    assert_eq!(timed_out.status.code(), Some(1));
    assert!(text(&timed_out.stderr).contains("timed out"), "stderr: {}", text(&timed_out.stderr));
    controller.stop().await;
}

#[tokio::test]
async fn list_commands_have_tables_and_json() {
    let controller = TestController::start().await;
    let _a = controller.agent("alpha", &[("env", "test")]).await;
    let _ = ctl(&controller, &["exec", "--all", "--", "true"]).await;

    let hosts = ctl(&controller, &["hosts", "ls", "-o", "json"]).await;
    assert!(hosts.status.success(), "{}", text(&hosts.stderr));
    let hosts: serde_json::Value = serde_json::from_slice(&hosts.stdout).expect("json");
    assert_eq!(hosts[0]["name"], "alpha");
    assert_eq!(hosts[0]["online"], true);
    assert_eq!(hosts[0]["labels"]["env"], "test");

    let table = ctl(&controller, &["hosts", "ls"]).await;
    assert!(text(&table.stdout).contains("alpha") && text(&table.stdout).contains("online"));

    let jobs = ctl(&controller, &["jobs", "ls", "-o", "json"]).await;
    let jobs: serde_json::Value = serde_json::from_slice(&jobs.stdout).expect("json");
    assert_eq!(jobs[0]["state"], "succeeded");
    let id = jobs[0]["id"].as_u64().expect("id").to_string();

    let show = ctl(&controller, &["jobs", "show", &id]).await;
    assert!(show.status.success());
    assert!(text(&show.stdout).contains("alpha"));

    let missing = ctl(&controller, &["jobs", "show", "424242"]).await;
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("not found"), "{}", text(&missing.stderr));

    let token = ctl(&controller, &["token", "create", "--label", "env=lab", "--ttl", "10m"]).await;
    assert!(token.status.success(), "{}", text(&token.stderr));
    let out = text(&token.stdout);
    assert!(
        out.contains("tailops-agent enroll --controller") && out.contains("--ca-fingerprint sha256:"),
        "{out}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn usage_errors_are_clear() {
    let controller = TestController::start().await;
    let no_selector = ctl(&controller, &["exec", "--", "true"]).await;
    assert_eq!(no_selector.status.code(), Some(2));
    assert!(text(&no_selector.stderr).contains("--all"), "{}", text(&no_selector.stderr));

    let missing_profile = tokio::process::Command::new(binary("tailopsctl").await)
        .args(["--profile", "/nonexistent/profile.toml", "hosts", "ls"])
        .output()
        .await
        .expect("run");
    assert!(!missing_profile.status.success());
    assert!(text(&missing_profile.stderr).contains("no profile found"), "{}", text(&missing_profile.stderr));

    let bad_ttl = ctl(&controller, &["token", "create", "--ttl", "forever"]).await;
    assert_eq!(bad_ttl.status.code(), Some(2));
    controller.stop().await;
}
