//! The identity, approval and audit commands of the `tailopsctl` binary.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tailops_tests::*;

async fn ctl_with(profile: &Path, args: &[&str]) -> Output {
    tailopsctl(profile, args).await
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json output")
}

#[tokio::test]
async fn invite_login_whoami_and_admin_listings() {
    let controller = TestController::start().await;
    let admin = controller.admin_profile_file().await;
    let invite = json(
        &ctl_with(
            &admin,
            &["users", "invite", "bob", "--role", "operator", "--scope-label", "env=lab", "-o", "json"],
        )
        .await,
    );

    let bob_profile = controller.dir.path().join("bob.toml");
    let login = tokio::process::Command::new(binary("tailopsctl").await)
        .arg("--profile")
        .arg(&bob_profile)
        .args(["login", "--controller", &controller.url, "--ca-fingerprint"])
        .arg(invite["ca_fingerprint"].as_str().expect("fingerprint"))
        .env("TAILOPS_INVITE_TOKEN", invite["token"].as_str().expect("token"))
        .output()
        .await
        .expect("login");
    assert!(login.status.success(), "{}", text(&login.stderr));
    use std::os::unix::fs::PermissionsExt;
    let mode = tokio::fs::metadata(&bob_profile).await.expect("profile").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let me = json(&ctl_with(&bob_profile, &["whoami", "-o", "json"]).await);
    assert_eq!(me["role"], "operator");
    assert_eq!(me["scope"], "env=lab");

    let users = json(&ctl_with(&admin, &["users", "ls", "-o", "json"]).await);
    assert_eq!(users.as_array().map(Vec::len), Some(2));
    let certs = json(&ctl_with(&admin, &["certs", "ls", "-o", "json"]).await);
    assert!(certs.as_array().is_some_and(|c| {
        c.iter().any(|c| c["principal"].as_str().is_some_and(|p| p.ends_with("/user/bob")))
    }));
    let _ = ctl_with(&admin, &["token", "create", "--uses", "2"]).await;
    let tokens = json(&ctl_with(&admin, &["token", "ls", "-o", "json"]).await);
    let token_id = tokens[0]["id"].as_str().expect("id").to_owned();
    assert!(ctl_with(&admin, &["token", "revoke", &token_id]).await.status.success());
    assert_eq!(
        json(&ctl_with(&admin, &["token", "ls", "-o", "json"]).await).as_array().map(Vec::len),
        Some(0)
    );

    let disabled = ctl_with(&admin, &["users", "disable", "bob"]).await;
    assert!(disabled.status.success(), "{}", text(&disabled.stderr));
    let refused = ctl_with(&bob_profile, &["hosts", "ls"]).await;
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("disabled"), "{}", text(&refused.stderr));

    let audit = json(&ctl_with(&admin, &["audit", "ls", "--action", "identity.disable", "-o", "json"]).await);
    assert_eq!(audit[0]["targets"][0].as_str().map(|t| t.ends_with("/user/bob")), Some(true));
    let verify = ctl_with(&admin, &["audit", "verify"]).await;
    assert!(verify.status.success());
    assert!(text(&verify.stdout).contains("intact"));
    controller.stop().await;
}

#[tokio::test]
async fn a_bridge_exec_waits_until_a_human_approves_it_from_the_cli() {
    let controller = TestController::start().await;
    let _a = controller.agent("alpha", &[]).await;
    let admin = controller.admin_profile_file().await;
    let bridge = controller.principal("bridge", "assistant", "mcp", None).await;
    let bridge_profile = controller.dir.path().join("bridge.toml");
    bridge.save_new(&bridge_profile).await.expect("save");

    let waiting = tokio::process::Command::new(binary("tailopsctl").await)
        .arg("--profile")
        .arg(&bridge_profile)
        .args(["exec", "--all", "--reason", "disk check", "--", "echo", "approved"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn exec");

    let mut job_id = None;
    for _ in 0..100 {
        let pending = json(&ctl_with(&admin, &["approvals", "ls", "-o", "json"]).await);
        if let Some(id) = pending[0]["job_id"].as_u64() {
            assert_eq!(pending[0]["reason"], "disk check");
            job_id = Some(id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job_id = job_id.expect("the job waits for approval").to_string();
    let approve = ctl_with(&admin, &["approvals", "approve", &job_id]).await;
    assert!(approve.status.success(), "{}", text(&approve.stderr));

    let out = tokio::time::timeout(Duration::from_secs(30), waiting.wait_with_output())
        .await
        .expect("finished")
        .expect("exec");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("[alpha] approved"));
    assert!(text(&out.stderr).contains("needs a human's approval"));
    controller.stop().await;
}

#[tokio::test]
async fn the_cli_renews_its_certificate_when_it_is_due() {
    let controller = TestController::start_with(|c| c.timing.user_cert_lifetime_secs = 60).await;
    let user = controller.principal("user", "rita", "viewer", None).await;
    let path = controller.dir.path().join("rita.toml");
    user.save_new(&path).await.expect("save");

    let first = ctl_with(&path, &["hosts", "ls"]).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(text(&first.stderr).contains("renewed"), "{}", text(&first.stderr));
    let renewed = tailopsctl::Profile::load(&path).await.expect("profile");
    assert_ne!(renewed.cert_pem, user.cert_pem);
    assert_ne!(renewed.key_pem, user.key_pem);
    let again = ctl_with(&path, &["whoami"]).await;
    assert!(again.status.success(), "{}", text(&again.stderr));
    controller.stop().await;
}
