//! A full disk under the controller's data directory: writes are refused with an error that
//! names the database, reads go on, nothing stored is damaged, and the controller recovers by
//! itself once space is freed. Under an agent's state directory: a job is refused before it
//! starts (it could not be journaled, so it could run twice), naming the journal, and runs once
//! space is freed. Each directory is a small tmpfs of its own (needs root, as CI has; skipped
//! with a message elsewhere).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tailops_proto::v1;
use tailops_tests::*;
use tokio::io::AsyncWriteExt;

/// Unmounts the test's filesystem however the test ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        // Drop cannot await; a lazy unmount returns at once.
        #[allow(clippy::disallowed_methods)]
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn mount_small_tmpfs(at: &Path) -> Option<Mounted> {
    tokio::fs::create_dir_all(at).await.expect("mount point");
    let mounted = tokio::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m,mode=0700", "tailops-test", &at.display().to_string()])
        .output()
        .await
        .ok()?;
    if !mounted.status.success() {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {}", text(&mounted.stderr));
        return None;
    }
    Some(Mounted(at.to_owned()))
}

/// Writes zeros to `path` until the filesystem is full.
async fn fill(path: &Path) {
    let mut file = tokio::fs::File::create(path).await.expect("filler");
    let chunk = vec![0u8; 256 * 1024];
    while file.write_all(&chunk).await.is_ok() && file.flush().await.is_ok() {}
    let _ = file.sync_all().await;
}

#[tokio::test]
async fn a_full_disk_refuses_writes_by_name_keeps_reads_and_recovers_when_space_is_freed() {
    let _ =
        tracing_subscriber::fmt().with_env_filter("tailops_controller=warn").with_test_writer().try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("controller");
    let Some(_mounted) = mount_small_tmpfs(&data).await else { return };
    let controller = TestController::start_in(dir, |_| {}).await;
    let _agent = controller.agent("disk", &[]).await;
    let before = exec_request(all_hosts(), &["echo", "before"], Duration::from_secs(10));
    let (state, _, _) = run_request(&controller, "disk", before).await;
    assert_eq!(state, v1::TargetState::Succeeded);

    let filler = data.join("filler");
    fill(&filler).await;
    // SQLite may reuse room its write-ahead log already holds: write until a write is refused.
    let mut refusal = None;
    for _ in 0..200 {
        let request = exec_request(all_hosts(), &["echo", "full"], Duration::from_secs(10));
        match controller.fleet().await.run_job(request).await {
            Ok(stream) => drop(collect_events(stream.into_inner()).await),
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let status = refusal.expect("no write was refused on a full disk");
    assert!(matches!(status.code(), tonic::Code::ResourceExhausted | tonic::Code::Unavailable), "{status:?}");
    let database = data.join("tailops.db").display().to_string();
    assert!(status.message().contains("disk") && status.message().contains(&database), "{status:?}");

    // Reads go on.
    assert!(controller.host("disk").await.is_some_and(|h| h.online));
    let jobs = controller
        .fleet()
        .await
        .list_jobs(v1::ListJobsRequest { limit: 10 })
        .await
        .expect("jobs listed on a full disk")
        .into_inner();
    assert!(!jobs.jobs.is_empty());

    // Space freed: writes succeed again without a restart.
    tokio::fs::remove_file(&filler).await.expect("free space");
    let mut last = String::new();
    for _ in 0..100 {
        let request = exec_request(all_hosts(), &["echo", "after"], Duration::from_secs(10));
        match controller.fleet().await.run_job(request).await {
            Ok(stream) => {
                let events = collect_events(stream.into_inner()).await;
                let finished = finished_by_host(&events);
                if finished.get("disk").is_some_and(|f| f.state() == v1::TargetState::Succeeded) {
                    last.clear();
                    break;
                }
                last = format!("{finished:?}");
            }
            Err(status) => last = format!("{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last.is_empty(), "the controller did not recover once space was freed: {last}");

    // Nothing stored was damaged.
    let verified = controller
        .audit()
        .await
        .verify_audit(v1::VerifyAuditRequest::default())
        .await
        .expect("verify")
        .into_inner();
    assert!(verified.intact, "{verified:?}");
    let integrity = integrity_check(&data.join("tailops.db")).await;
    assert_eq!(integrity, "ok");
    controller.stop().await;
}

#[tokio::test]
async fn a_full_agent_disk_refuses_jobs_by_name_before_they_start_and_recovers() {
    let controller = TestController::start().await;
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let state = agent_dir.path().join("state");
    let Some(_mounted) = mount_small_tmpfs(&state).await else { return };
    let token = controller.token(&[], 1, Duration::from_secs(60)).await;
    tailops_agent::enroll(controller.enroll_options(&token, "cramped", &state)).await.expect("enroll");
    let mut options = tailops_agent::LinkOptions::new(&state);
    options.monitor = None;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { tailops_agent::run(options, stop).await });
    controller.wait_online("cramped", true).await;

    let marker = agent_dir.path().join("ran");
    let script = format!("echo ran >> '{}'", marker.display());
    let filler = state.join("filler");
    fill(&filler).await;
    let request = exec_request(all_hosts(), &["sh", "-c", &script], Duration::from_secs(10));
    let (state_of, result, _) = run_request(&controller, "cramped", request).await;
    assert_eq!(state_of, v1::TargetState::Failed, "{result:?}");
    assert!(
        result.error.contains("cannot record the job in its journal")
            && result.error.contains("jobs/journal"),
        "{}",
        result.error
    );
    assert!(!marker.exists(), "a job that could not be journaled ran");

    tokio::fs::remove_file(&filler).await.expect("free space");
    let request = exec_request(all_hosts(), &["sh", "-c", &script], Duration::from_secs(10));
    let (state_of, result, _) = run_request(&controller, "cramped", request).await;
    assert_eq!(state_of, v1::TargetState::Succeeded, "{result:?}");
    assert_eq!(tokio::fs::read_to_string(&marker).await.expect("marker"), "ran\n");
    shutdown.cancel();
    let _ = task.await;
    controller.stop().await;
}

async fn integrity_check(database: &Path) -> String {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(database)
        .read_only(true)
        .connect()
        .await
        .expect("open database");
    sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await.expect("integrity check")
}
