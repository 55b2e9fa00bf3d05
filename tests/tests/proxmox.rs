//! Proxmox operations. No Proxmox host is available in CI, so `pct` and `qm` are stand-in
//! scripts (the agent's configured tool paths) that accept only the exact argv the agent must
//! send and replay output captured from Proxmox VE 8.2; every call is logged so the tests can
//! assert what ran, and what did not.

use std::path::{Path, PathBuf};

use tailops_agent::ops::OpsConfig;
use tailops_proto::v1;
use tailops_tests::*;

async fn script(dir: &Path, name: &str, cases: &str) -> PathBuf {
    let path = dir.join(name);
    let log = dir.join("calls.log");
    let body = format!(
        "#!/bin/sh\necho \"{name} $*\" >> '{log}'\ncase \"$*\" in\n{cases}\n  *) echo \"unexpected argv: $*\" >&2; exit 64 ;;\nesac\n",
        log = log.display()
    );
    stand_in(&path, &body).await;
    path
}

async fn fake_proxmox(dir: &Path) -> OpsConfig {
    let pct = script(
        dir,
        "pct",
        r#"  "list") printf '%s\n' 'VMID       Status     Lock         Name' '100        running                 pihole' '101        stopped                 test-ct' ;;
  "listsnapshot 100") printf '%s\n' '`-> before-upgrade              2024-01-10 10:00:00     no-description' '  `-> current                                         You are here!' ;;
  "start 101"|"rollback 100 before-upgrade") ;;"#,
    )
    .await;
    let qm = script(
        dir,
        "qm",
        r#"  "list") printf '%s\n' '      VMID NAME                 STATUS     MEM(MB)    BOOTDISK(GB) PID' '       200 win11                running    8192              64.00 12345' ;;
  "shutdown 200") ;;"#,
    )
    .await;
    OpsConfig { pct, qm, ..OpsConfig::default() }
}

async fn op(
    controller: &TestController,
    name: &str,
    params: &[(&str, &str)],
    dry_run: bool,
) -> v1::CommandResult {
    run_op(controller, "pve", name, params, dry_run).await.1
}

#[tokio::test]
async fn guests_are_listed_started_and_rolled_back_only_to_snapshots_that_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ops = fake_proxmox(dir.path()).await;
    let controller = TestController::start().await;
    let _agent = controller.agent_with("pve", &[], None, ops).await;

    let list = op_output(&op(&controller, "proxmox.list", &[], false).await);
    assert_eq!(list.records.len(), 3, "{list:?}");
    assert_eq!(list.summary, "3 guest(s)");

    let started = op(&controller, "proxmox.start", &[("vmid", "101")], false).await;
    assert_eq!(started.exit_code, Some(0), "{}", started.error);
    assert!(calls(dir.path()).await.contains(&"pct start 101".to_owned()));

    let shutdown = op(&controller, "proxmox.shutdown", &[("vmid", "200")], false).await;
    assert_eq!(shutdown.exit_code, Some(0), "{}", shutdown.error);
    assert!(calls(dir.path()).await.contains(&"qm shutdown 200".to_owned()), "VMs go through qm");

    let dry = op_output(
        &op(&controller, "proxmox.rollback", &[("vmid", "100"), ("snapshot", "before-upgrade")], true).await,
    );
    assert_eq!(dry.plan, vec!["pct rollback 100 before-upgrade"]);
    assert!(
        !calls(dir.path()).await.iter().any(|c| c.starts_with("pct rollback")),
        "the dry run rolled back"
    );

    let missing = op(&controller, "proxmox.rollback", &[("vmid", "100"), ("snapshot", "nope")], false).await;
    assert!(missing.error.contains("has no snapshot \"nope\""), "{}", missing.error);
    let ghost = op(&controller, "proxmox.start", &[("vmid", "999")], false).await;
    assert!(ghost.error.contains("no container or VM 999"), "{}", ghost.error);

    let rolled =
        op(&controller, "proxmox.rollback", &[("vmid", "100"), ("snapshot", "before-upgrade")], false).await;
    assert_eq!(rolled.exit_code, Some(0), "{}", rolled.error);
    assert!(calls(dir.path()).await.contains(&"pct rollback 100 before-upgrade".to_owned()));
    controller.stop().await;
}

#[tokio::test]
async fn a_host_that_is_not_proxmox_says_so() {
    let controller = TestController::start().await;
    let ops =
        OpsConfig { pct: "/nonexistent/pct".into(), qm: "/nonexistent/qm".into(), ..OpsConfig::default() };
    let _agent = controller.agent_with("pve", &[], None, ops).await;
    let result = op(&controller, "proxmox.list", &[], false).await;
    assert!(result.not_available, "{}", result.error);
    assert!(result.error.contains("not a Proxmox VE host"), "{}", result.error);
    // Bad snapshot names never reach a job.
    let err = controller
        .fleet()
        .await
        .run_job(v1::RunJobRequest {
            selector: Some(v1::HostSelector { hosts: vec!["pve".into()], ..Default::default() }),
            action: Some(v1::JobAction {
                elevated: false,
                kind: Some(v1::job_action::Kind::Operation(v1::OperationAction {
                    name: "proxmox.snapshot".into(),
                    params: [
                        ("vmid".to_owned(), "100".to_owned()),
                        ("snapshot".to_owned(), "1bad;rm".to_owned()),
                    ]
                    .into(),
                    dry_run: false,
                })),
            }),
            timeout_ms: 5_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    controller.stop().await;
}
