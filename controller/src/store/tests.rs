//! The batch writes and the in-memory host keys, against a real SQLite file.

use std::sync::Arc;

use tailops_pki::IssuedCertificate;
use tailops_proto::v1;

use super::*;
use crate::result_writer::{HostResult, JobEnd};

async fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("t.db")).await.expect("open");
    (dir, store)
}

const TOKEN_HASH: &[u8] = b"token-hash";

async fn create_token(store: &Store) {
    store
        .insert_join_token(&NewJoinToken {
            id: "tok".into(),
            secret_hash: TOKEN_HASH.to_vec(),
            labels: Labels::from([("site".to_owned(), "lab".to_owned())]),
            created_by: "spiffe://t/user/admin".into(),
            created_at_ms: 0,
            expires_at_ms: i64::MAX,
            uses: 10,
        })
        .await
        .expect("token");
}

async fn enroll(store: &Store, id: &str, name: &str) {
    let host = NewHost { id: id.into(), name: name.into(), principal_uri: format!("spiffe://t/host/{id}") };
    let cert =
        IssuedCertificate { pem: String::new(), serial: format!("serial-{id}"), not_after_ms: i64::MAX };
    store
        .enroll_host(TOKEN_HASH, &host, 1, || Ok::<_, std::convert::Infallible>(cert))
        .await
        .expect("store")
        .expect("issue");
}

#[tokio::test]
async fn host_keys_follow_enrollments_and_deletions() {
    let (_dir, store) = open().await;
    assert!(store.host_keys().await.expect("keys").is_empty());
    create_token(&store).await;

    enroll(&store, "h-b", "web-b").await;
    enroll(&store, "h-a", "web-a").await;
    let keys = store.host_keys().await.expect("keys");
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["web-a", "web-b"], "ordered by name");
    assert_eq!(keys[0].id, "h-a");
    assert_eq!(keys[0].label("site"), Some("lab"), "the token's labels");
    assert!(Arc::ptr_eq(&keys, &store.host_keys().await.expect("keys")), "unchanged hosts come from memory");

    assert!(store.delete_host("h-a").await.expect("delete"));
    let keys = store.host_keys().await.expect("keys");
    assert_eq!(keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["h-b"]);

    // A clone shares the cache, so a change through one is seen through the other.
    let other = store.clone();
    enroll(&other, "h-c", "web-c").await;
    assert_eq!(store.host_keys().await.expect("keys").len(), 2);
}

#[tokio::test]
async fn results_of_a_large_job_are_all_written_with_its_end() {
    let (_dir, store) = open().await;
    // More targets than one multi-row statement holds, and not a multiple of it.
    let targets: Vec<v1::JobTarget> = (0..ROWS_PER_STATEMENT * 2 + 7)
        .map(|i| v1::JobTarget { host_id: format!("h{i:04}"), host_name: format!("web{i:04}") })
        .collect();
    let job_id = store
        .create_job(&NewJob {
            requested_by: "spiffe://t/user/admin".into(),
            requested_via: String::new(),
            selector: v1::HostSelector { all: true, ..Default::default() },
            action: v1::JobAction::default(),
            concurrency: 0,
            output_cap: 1024,
            created_at_ms: 1,
            deadline_ms: 10_000,
            timeout_ms: 10_000,
            reason: String::new(),
            approval_expires_at_ms: 0,
            queue_for_ms: 0,
            reach: v1::ReadReach::Observe,
            targets: targets.clone(),
        })
        .await
        .expect("create");
    let (_, stored) = store.job(job_id).await.expect("job").expect("exists");
    assert_eq!(stored.len(), targets.len());
    assert!(stored.iter().all(|t| t.state == v1::TargetState::Pending as i32));

    let results: Vec<HostResult> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| HostResult {
            job_id,
            host_id: t.host_id.clone(),
            outcome: TargetOutcome {
                state: if i % 2 == 0 { v1::TargetState::Succeeded } else { v1::TargetState::Failed },
                result: v1::CommandResult {
                    exit_code: Some(i32::try_from(i % 2).expect("code")),
                    ..Default::default()
                },
                stdout: format!("out {i}").into_bytes(),
                stderr: Vec::new(),
                started_at_ms: 2,
                finished_at_ms: 3 + i64::try_from(i).expect("i"),
            },
        })
        .collect();
    let end = JobEnd { job_id, state: v1::JobState::Failed, finished_at_ms: 99 };
    store.finish_targets(&results, &[end]).await.expect("finish");

    let (job, stored) = store.job(job_id).await.expect("job").expect("exists");
    assert_eq!(job.state, v1::JobState::Failed as i32);
    assert_eq!(job.finished_at_ms, 99);
    assert_eq!(stored.len(), targets.len());
    for detail in &stored {
        let host_id = &detail.target.as_ref().expect("target").host_id;
        let i: usize = host_id[1..].parse().expect("index");
        let expected = &results[i].outcome;
        assert_eq!(detail.state, expected.state as i32, "{host_id}");
        assert_eq!(detail.stdout, expected.stdout, "{host_id}");
        assert_eq!(detail.finished_at_ms, expected.finished_at_ms, "{host_id}");
        assert_eq!(detail.result.as_ref().and_then(|r| r.exit_code), expected.result.exit_code, "{host_id}");
    }
}

#[tokio::test]
async fn batched_heartbeats_and_latest_samples_never_go_back_in_time() {
    let (_dir, store) = open().await;
    create_token(&store).await;
    enroll(&store, "h-a", "web-a").await;
    enroll(&store, "h-b", "web-b").await;

    store.record_last_seen(&[("h-a".into(), 500), ("h-b".into(), 700)]).await.expect("seen");
    store.record_last_seen(&[("h-a".into(), 400), ("h-b".into(), 800)]).await.expect("seen");
    let seen = |id: &'static str| {
        let store = store.clone();
        async move { store.host(id).await.expect("host").expect("exists").last_seen_ms }
    };
    assert_eq!(seen("h-a").await, 500, "an older heartbeat does not move last-seen back");
    assert_eq!(seen("h-b").await, 800);

    let sample = |at_ms, cpu_percent| v1::MetricSample { at_ms, cpu_percent, ..Default::default() };
    store
        .insert_samples(&[], &[("h-a".into(), sample(2_000, 20.0)), ("h-b".into(), sample(2_000, 30.0))])
        .await
        .expect("samples");
    store
        .insert_samples(&[], &[("h-a".into(), sample(1_000, 10.0)), ("h-b".into(), sample(3_000, 40.0))])
        .await
        .expect("samples");
    let mut latest = store.latest_samples().await.expect("latest");
    latest.sort_by(|a, b| a.0.cmp(&b.0));
    let got: Vec<(&str, i64, f64)> =
        latest.iter().map(|(h, s)| (h.as_str(), s.at_ms, s.cpu_percent)).collect();
    assert_eq!(
        got,
        [("h-a", 2_000, 20.0), ("h-b", 3_000, 40.0)],
        "a late older sample does not replace a newer one"
    );
}
