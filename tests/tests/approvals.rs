//! Approvals: the MCP role's exec waits for a different human who may run it.

use std::time::Duration;

use tailops_proto::v1::{self, OutputStream};
use tailops_tests::*;

fn decide(job_id: u64, approve: bool, reason: &str) -> v1::DecideApprovalRequest {
    v1::DecideApprovalRequest { job_id, approve, reason: reason.to_owned() }
}

#[tokio::test]
async fn a_bridge_exec_waits_for_a_human_and_then_runs() {
    let controller = TestController::start().await;
    let _a = controller.agent("a", &[]).await;
    let bridge = controller.principal("bridge", "claude", "mcp", None).await;
    let viewer = controller.principal("user", "vic", "viewer", None).await;
    let mut as_bridge = controller.fleet_as(&bridge).await;

    let mut request = exec_request(all_hosts(), &["echo", "approved output"], Duration::from_secs(10));
    request.reason = "check the disk".into();
    let mut stream = as_bridge.run_job(request).await.expect("accepted").into_inner();
    let job_id = until_approval_required(&mut stream).await;

    let pending =
        controller.fleet().await.list_approvals(v1::ListApprovalsRequest {}).await.expect("ls").into_inner();
    assert_eq!(pending.approvals.len(), 1);
    assert_eq!(pending.approvals[0].reason, "check the disk");

    // The bridge is not human; the viewer may not run exec; neither may approve.
    let err = as_bridge.decide_approval(decide(job_id, true, "")).await.expect_err("bridge");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = controller
        .fleet_as(&viewer)
        .await
        .decide_approval(decide(job_id, true, ""))
        .await
        .expect_err("viewer");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    controller.fleet().await.decide_approval(decide(job_id, true, "")).await.expect("admin approves");
    let events = collect_events(stream).await;
    assert!(
        events.iter().any(|e| matches!(&e.kind, Some(v1::job_event::Kind::ApprovalDecided(d)) if d.approved))
    );
    assert_eq!(output_of(&events, "a", OutputStream::Stdout), "approved output\n");
    assert_eq!(completed(&events).state(), v1::JobState::Succeeded);
    let job = controller.fleet().await.get_job(v1::GetJobRequest { job_id }).await.expect("job").into_inner();
    assert!(job.job.expect("job").decided_by.ends_with("/user/admin"));
    controller.stop().await;
}

#[tokio::test]
async fn the_requester_cannot_approve_its_own_job_and_rejection_needs_a_reason() {
    let controller = TestController::start().await;
    let _a = controller.agent("a", &[]).await;
    // A human with the mcp role: needs approval, and must not approve itself.
    let requester = controller.principal("user", "mia", "mcp", None).await;
    let mut as_requester = controller.fleet_as(&requester).await;
    let mut stream = as_requester
        .run_job(exec_request(all_hosts(), &["true"], Duration::from_secs(10)))
        .await
        .expect("accepted")
        .into_inner();
    let job_id = until_approval_required(&mut stream).await;
    let err = as_requester.decide_approval(decide(job_id, true, "")).await.expect_err("self approval");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let mut admin = controller.fleet().await;
    let err = admin.decide_approval(decide(job_id, false, " ")).await.expect_err("no reason");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    admin.decide_approval(decide(job_id, false, "not today")).await.expect("reject");
    let events = collect_events(stream).await;
    assert_eq!(completed(&events).state(), v1::JobState::Rejected);
    assert!(output_of(&events, "a", OutputStream::Stdout).is_empty());
    let again = admin.decide_approval(decide(job_id, true, "")).await.expect_err("already decided");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    controller.stop().await;
}

#[tokio::test]
async fn a_pending_approval_survives_a_controller_restart() {
    let controller = TestController::start().await;
    let agent = controller.agent("a", &[]).await;
    let bridge = controller.principal("bridge", "bot", "mcp", None).await;
    let mut stream = controller
        .fleet_as(&bridge)
        .await
        .run_job(exec_request(all_hosts(), &["echo", "after restart"], Duration::from_secs(10)))
        .await
        .expect("accepted")
        .into_inner();
    let job_id = until_approval_required(&mut stream).await;
    drop(stream);

    let controller = controller.restart().await;
    controller.wait_online("a", true).await;
    let pending =
        controller.fleet().await.list_approvals(v1::ListApprovalsRequest {}).await.expect("ls").into_inner();
    assert_eq!(
        pending.approvals.iter().map(|a| a.job.as_ref().map(|j| j.id)).collect::<Vec<_>>(),
        [Some(job_id)]
    );

    let watch =
        controller.fleet().await.watch_job(v1::WatchJobRequest { job_id }).await.expect("watch").into_inner();
    controller.fleet().await.decide_approval(decide(job_id, true, "")).await.expect("approve");
    let events = collect_events(watch).await;
    assert_eq!(output_of(&events, "a", OutputStream::Stdout), "after restart\n");
    drop(agent);
    controller.stop().await;
}

#[tokio::test]
async fn an_unanswered_approval_expires() {
    let controller = TestController::start_with(|c| c.timing.approval_ttl_secs = 1).await;
    let _a = controller.agent("a", &[]).await;
    let bridge = controller.principal("bridge", "bot", "mcp", None).await;
    let stream = controller
        .fleet_as(&bridge)
        .await
        .run_job(exec_request(all_hosts(), &["true"], Duration::from_secs(10)))
        .await
        .expect("accepted")
        .into_inner();
    let events = collect_events(stream).await;
    assert_eq!(completed(&events).state(), v1::JobState::Expired);
    controller.stop().await;
}

#[tokio::test]
async fn approvers_see_which_client_a_bridges_job_came_through() {
    const CLIENT: &str = "claude-code/1.0.3";
    let controller = TestController::start().await;
    let _a = controller.agent("a", &[]).await;
    let bridge = controller.principal("bridge", "assistant", "mcp", None).await;
    let request = exec_request(all_hosts(), &["echo", "via a client"], Duration::from_secs(10));
    let mut stream = controller
        .fleet_as(&bridge)
        .await
        .run_job(via(request, CLIENT.as_bytes()))
        .await
        .expect("accepted")
        .into_inner();
    let job_id = until_approval_required(&mut stream).await;

    let pending =
        controller.fleet().await.list_approvals(v1::ListApprovalsRequest {}).await.expect("ls").into_inner();
    let job = pending.approvals[0].job.clone().expect("job");
    assert_eq!((job.id, job.requested_via.as_str()), (job_id, CLIENT));

    let admin = controller.admin_profile_file().await;
    let requested = format!("{} via {CLIENT}", bridge.principal);
    let ls = tailopsctl(&admin, &["approvals", "ls"]).await;
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    assert!(text(&ls.stdout).contains(&requested), "{}", text(&ls.stdout));
    let ls = tailopsctl(&admin, &["approvals", "ls", "-o", "json"]).await;
    let ls: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("json");
    assert_eq!(ls[0]["requested_via"], CLIENT);

    controller.fleet().await.decide_approval(decide(job_id, true, "")).await.expect("approve");
    assert_eq!(completed(&collect_events(stream).await).state(), v1::JobState::Succeeded);
    let show = tailopsctl(&admin, &["jobs", "show", &job_id.to_string()]).await;
    assert!(show.status.success(), "{}", text(&show.stderr));
    assert!(text(&show.stdout).contains(&requested), "{}", text(&show.stdout));
    let job = controller.fleet().await.get_job(v1::GetJobRequest { job_id }).await.expect("job").into_inner();
    assert_eq!(job.job.expect("job").requested_via, CLIENT);

    // The job's rows carry the bridge's client; the approval is the admin's, who named none,
    // but records which client it approved.
    let rows = controller
        .audit()
        .await
        .list_audit(v1::ListAuditRequest { limit: 1000, ..Default::default() })
        .await
        .expect("audit")
        .into_inner()
        .entries;
    let row = |action: &str| rows.iter().find(|e| e.action == action).cloned().expect(action);
    assert_eq!(row("job.create").client, CLIENT);
    assert_eq!(row("job.complete").client, CLIENT);
    let approval = row("approval.approve");
    assert_eq!(approval.client, "");
    assert!(approval.arguments_json.contains(CLIENT), "{}", approval.arguments_json);
    controller.stop().await;
}
