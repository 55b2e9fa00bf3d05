//! The agent's file policy end to end (issue 13 points 1 and 2; review findings C1, H1, H2, H3,
//! M1, L11, L16): a real controller, a real in-process agent whose file policy points at temp
//! directories, real principals of each role over mTLS, real files, symlinks and FIFOs.
//!
//! Each agent here has an observe root (`log`, what viewers and the `mcp` role read) and a
//! wider control root (`srv`, what operators and approved elevated requests read); `outside`
//! is under neither.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tailops_agent::ops::{FilePolicy, OpsConfig};
use tailops_proto::v1;
use tailops_tests::*;
use tokio::io::AsyncWriteExt;
use tonic::Code;

const HOST: &str = "files";

#[derive(Debug)]
struct Tree {
    _dir: tempfile::TempDir,
    observe: PathBuf,
    control: PathBuf,
    outside: PathBuf,
}

impl Tree {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        let (observe, control, outside) = (root.join("log"), root.join("srv"), root.join("outside"));
        for d in [&observe, &control, &outside] {
            tokio::fs::create_dir_all(d).await.expect("mkdir");
        }
        let lines: String = (1..=50).map(|i| format!("event {i}\n")).collect();
        tokio::fs::write(observe.join("app.log"), lines).await.expect("write");
        tokio::fs::write(control.join("config.txt"), "listen = 8080\n").await.expect("write");
        tokio::fs::write(outside.join("secret.txt"), "TOPSECRET root:$6$hash\n").await.expect("write");
        Self { _dir: dir, observe, control, outside }
    }

    fn policy(&self) -> FilePolicy {
        FilePolicy {
            observe_roots: vec![self.observe.clone()],
            base_dirs: vec![self.observe.clone(), self.control.clone()],
            deny: vec![],
        }
    }

    async fn agent(&self, controller: &TestController) -> TestAgent {
        let ops = OpsConfig { files: self.policy(), ..OpsConfig::default() };
        controller.agent_with(HOST, &[], None, ops).await
    }
}

fn at(path: &Path) -> String {
    path.display().to_string()
}

/// Runs a request as `profile` and returns the host's final state, result and streamed stdout.
async fn run_as(
    controller: &TestController,
    profile: &tailopsctl::Profile,
    request: v1::RunJobRequest,
) -> (v1::TargetState, v1::CommandResult, String) {
    let stream = controller.fleet_as(profile).await.run_job(request).await.expect("accepted").into_inner();
    let events =
        tokio::time::timeout(Duration::from_secs(60), collect_events(stream)).await.expect("did not hang");
    let stdout = output_of(&events, HOST, v1::OutputStream::Stdout);
    let finished = finished_by_host(&events).remove(HOST).expect("a result from the host");
    (finished.state(), finished.result.unwrap_or_default(), stdout)
}

async fn op_as(
    controller: &TestController,
    profile: &tailopsctl::Profile,
    name: &str,
    params: &[(&str, &str)],
) -> (v1::TargetState, v1::CommandResult) {
    let (state, result, _) = run_as(controller, profile, op_request(HOST, name, params, false)).await;
    (state, result)
}

fn elevated(mut request: v1::RunJobRequest) -> v1::RunJobRequest {
    request.action.as_mut().expect("action").elevated = true;
    request
}

#[track_caller]
fn assert_refused(state: v1::TargetState, result: &v1::CommandResult, why: &str) {
    assert_eq!(state, v1::TargetState::Failed, "{}", result.error);
    assert!(
        result.error.starts_with("refused:") && result.error.contains(why),
        "wanted {why:?}: {}",
        result.error
    );
    assert!(result.output.is_none(), "nothing was returned: {:?}", result.output);
}

/// A TailOps profile as `tailopsctl login` writes one, holding `key`.
fn profile_text(key: &str) -> String {
    format!(
        "endpoint = \"https://controller:7443\"\ncert_pem = \"\"\"\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\"\"\"\nkey_pem = \"\"\"\n{key}\"\"\"\n"
    )
}

/// Runs `request` as `profile` and reads events until the job asks for approval (failing if it
/// ran instead); returns the job id and the stream.
async fn request_pending_approval(
    controller: &TestController,
    profile: &tailopsctl::Profile,
    request: v1::RunJobRequest,
) -> (u64, tonic::Streaming<v1::JobEvent>) {
    let mut stream =
        controller.fleet_as(profile).await.run_job(request).await.expect("accepted").into_inner();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("did not hang")
            .expect("stream")
            .expect("an event before the end");
        assert!(
            !matches!(event.kind, Some(v1::job_event::Kind::Finished(_))),
            "the job ran without approval: {event:?}"
        );
        if matches!(event.kind, Some(v1::job_event::Kind::ApprovalRequired(_))) {
            return (event.job_id, stream);
        }
    }
}

async fn approve(
    controller: &TestController,
    job_id: u64,
    stream: tonic::Streaming<v1::JobEvent>,
) -> v1::TargetFinished {
    controller
        .fleet()
        .await
        .decide_approval(v1::DecideApprovalRequest { job_id, approve: true, reason: String::new() })
        .await
        .expect("admin approves");
    let events =
        tokio::time::timeout(Duration::from_secs(60), collect_events(stream)).await.expect("did not hang");
    finished_by_host(&events).remove(HOST).expect("a result from the host")
}

/// C1, as the issue tells it: an admin profile within reach of the `mcp` role.
#[tokio::test]
async fn c1_the_mcp_role_cannot_read_a_profile_or_key_anywhere() {
    let tree = Tree::new().await;
    let controller = TestController::start().await;
    let _agent = tree.agent(&controller).await;
    let bridge = controller.principal("bridge", "claude", "mcp", None).await;
    let key = controller.admin.key_pem.clone();
    let key_line = key.lines().nth(1).expect("a key body line").to_owned();
    let profile = profile_text(&key);
    let leaked = |result: &v1::CommandResult, stdout: &str| {
        let all = format!("{result:?}{stdout}");
        all.contains(&key_line) || all.contains("PRIVATE KEY")
    };

    // In a control root (where the dev quickstart's data dir lands): out of the mcp role's reach.
    let dev = tree.control.join("home/ops/src/.tailops-dev");
    tokio::fs::create_dir_all(&dev).await.expect("mkdir");
    tokio::fs::write(dev.join("admin.profile.toml"), &profile).await.expect("write");
    let in_control = at(&dev.join("admin.profile.toml"));
    // The deny list speaks first (a .tailops-dev directory); the search is out of reach.
    for (name, params, why) in [
        ("file.read", vec![("path", in_control.as_str())], "deny list"),
        ("file.tail", vec![("path", in_control.as_str())], "deny list"),
        (
            "file.search",
            vec![("path", &at(&tree.control)), ("pattern", "*.toml")],
            "outside the allowed directories at observe reach",
        ),
    ] {
        let (state, result) = op_as(&controller, &bridge, name, &params).await;
        assert_refused(state, &result, why);
        assert!(!leaked(&result, ""), "{name}");
    }

    // In an observe root: refused by its name...
    let profile_path = tree.observe.join("admin.profile.toml");
    tokio::fs::write(&profile_path, &profile).await.expect("write");
    for name in ["file.read", "file.tail", "log.file"] {
        let (state, result) = op_as(&controller, &bridge, name, &[("path", &at(&profile_path))]).await;
        assert_refused(state, &result, "deny list");
    }
    let (state, result) =
        op_as(&controller, &bridge, "file.search", &[("path", &at(&tree.observe)), ("pattern", "*.toml")])
            .await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert!(
        op_output(&result).records.is_empty(),
        "a denied file is not even named: {:?}",
        op_output(&result)
    );

    // ...and renamed, by its content, whichever bytes are asked for.
    let notes = tree.observe.join("notes.txt");
    tokio::fs::write(&notes, format!("{}{profile}{}", "x\n".repeat(20_000), "y\n".repeat(2000)))
        .await
        .expect("write");
    let body_at = (40_000 + profile.find(&key_line).expect("key in profile")).to_string();
    for (name, params) in [
        ("file.read", vec![("path", at(&notes)), ("offset", "0".into()), ("length", "1048576".into())]),
        ("file.read", vec![("path", at(&notes)), ("offset", body_at.clone()), ("length", "20".into())]),
        ("file.tail", vec![("path", at(&notes)), ("lines", "2100".into())]),
        ("log.file", vec![("path", at(&notes)), ("lines", "2100".into())]),
    ] {
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (state, result) = op_as(&controller, &bridge, name, &params).await;
        assert_refused(state, &result, "private key material");
        assert!(!leaked(&result, ""), "{name} {params:?}");
    }
    // Bytes far from the key still read.
    let (state, result) = op_as(
        &controller,
        &bridge,
        "file.read",
        &[("path", &at(&notes)), ("offset", "0"), ("length", "100")],
    )
    .await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert_eq!(field(&op_output(&result).records[0], "content"), "x\n".repeat(50));

    // Not even an approved elevated request reads the profile: the deny list wins at every tier.
    let request = elevated(op_request(HOST, "file.read", &[("path", &in_control)], false));
    let (job_id, stream) = request_pending_approval(&controller, &bridge, request).await;
    let finished = approve(&controller, job_id, stream).await;
    let result = finished.result.clone().unwrap_or_default();
    assert_refused(finished.state(), &result, "deny list");
    controller.stop().await;
}

/// Reads outside the observe roots are control tier: the `mcp` role's elevated request waits
/// for a human, and once approved reads an ordinary file but still not a key.
#[tokio::test]
async fn an_elevated_mcp_read_waits_for_approval_and_then_reads_only_what_control_may() {
    let tree = Tree::new().await;
    let controller = TestController::start().await;
    let _agent = tree.agent(&controller).await;
    let bridge = controller.principal("bridge", "claude", "mcp", None).await;
    let config = at(&tree.control.join("config.txt"));

    let (state, result) = op_as(&controller, &bridge, "file.read", &[("path", &config)]).await;
    assert_refused(state, &result, "an operator can read it, or ask with --elevate (needs approval)");

    let request = elevated(op_request(HOST, "file.read", &[("path", &config)], false));
    let (job_id, stream) = request_pending_approval(&controller, &bridge, request).await;
    let pending =
        controller.fleet().await.list_approvals(v1::ListApprovalsRequest {}).await.expect("ls").into_inner();
    assert_eq!(
        pending.approvals.iter().filter_map(|a| a.job.as_ref().map(|j| j.id)).collect::<Vec<_>>(),
        [job_id]
    );
    let finished = approve(&controller, job_id, stream).await;
    assert_eq!(finished.state(), v1::TargetState::Succeeded);
    let result = finished.result.unwrap_or_default();
    assert_eq!(field(&op_output(&result).records[0], "content"), "listen = 8080\n");

    let key_file = tree.control.join("deploy.txt");
    tokio::fs::write(&key_file, format!("deploy key:\n{}", controller.admin.key_pem)).await.expect("write");
    let request = elevated(op_request(HOST, "file.read", &[("path", &at(&key_file))], false));
    let (job_id, stream) = request_pending_approval(&controller, &bridge, request).await;
    let finished = approve(&controller, job_id, stream).await;
    let result = finished.result.clone().unwrap_or_default();
    assert_refused(finished.state(), &result, "private key material");
    controller.stop().await;
}

/// Operators read the control roots outright; viewers only the observe roots.
#[tokio::test]
async fn operators_read_the_base_directories_and_viewers_only_the_observe_roots() {
    let tree = Tree::new().await;
    let controller = TestController::start().await;
    let _agent = tree.agent(&controller).await;
    let operator = controller.principal("user", "olga", "operator", None).await;
    let viewer = controller.principal("user", "vic", "viewer", None).await;
    let config = at(&tree.control.join("config.txt"));

    let (state, result) = op_as(&controller, &operator, "file.read", &[("path", &config)]).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert_eq!(field(&op_output(&result).records[0], "content"), "listen = 8080\n");

    for (name, params) in [
        ("file.read", vec![("path", config.as_str())]),
        ("file.list", vec![("path", &at(&tree.control))]),
        ("file.stat", vec![("path", config.as_str())]),
        ("file.search", vec![("path", &at(&tree.control)), ("pattern", "*")]),
        ("security.secrets", vec![("path", &at(&tree.control))]),
        ("security.vulnscan", vec![("path", &at(&tree.control))]),
    ] {
        let (state, result) = op_as(&controller, &viewer, name, &params).await;
        assert_refused(state, &result, "outside the allowed directories at observe reach");
    }
    let (state, result) = op_as(
        &controller,
        &viewer,
        "file.tail",
        &[("path", &at(&tree.observe.join("app.log"))), ("lines", "1")],
    )
    .await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert_eq!(field(&op_output(&result).records[0], "line"), "event 50");
    controller.stop().await;
}

/// H1: credentials the old deny list missed are refused at control reach too, and the agent's
/// own state directory is denied even when a base directory contains it.
#[tokio::test]
async fn h1_the_deny_list_covers_credentials_at_every_tier() {
    let tree = Tree::new().await;
    let files = [
        "etc/shadow-",
        "etc/gshadow-",
        "etc/security/opasswd",
        "etc/krb5.keytab",
        "etc/rancher/k3s/k3s.yaml",
        "ci/kubeconfig",
        "home/al/.kube/config",
        "etc/NetworkManager/system-connections/wifi.nmconnection",
        "app/.env",
        "app/prod.env",
        "home/al/.bash_history",
        "home/al/.aws/credentials",
        "home/al/.config/gh/hosts.yml",
        "home/al/.config/rclone/rclone.conf",
        "home/al/.config/tailops/profile.toml",
        "home/al/admin.profile.toml",
        "tailops/controller.toml",
        "data/tailops.db",
        "state/agent.key.new",
    ];
    for f in files {
        let path = tree.control.join(f);
        tokio::fs::create_dir_all(path.parent().expect("parent")).await.expect("mkdir");
        tokio::fs::write(&path, "user:secret\n").await.expect("write");
    }
    // The agent's state directory sits in the temp directory, so make that a base directory.
    let temp = std::env::temp_dir().canonicalize().expect("temp dir");
    let mut policy = tree.policy();
    policy.base_dirs.push(temp);
    let controller = TestController::start().await;
    let agent =
        controller.agent_with(HOST, &[], None, OpsConfig { files: policy, ..OpsConfig::default() }).await;
    let operator = controller.principal("user", "olga", "operator", None).await;

    let state_file = agent.state_dir.path().canonicalize().expect("state dir").join("agent.toml");
    assert!(tokio::fs::try_exists(&state_file).await.expect("stat"), "the agent keeps its config there");
    let mut paths: Vec<String> = files.iter().map(|f| at(&tree.control.join(f))).collect();
    paths.push(at(&state_file));
    for path in &paths {
        for name in ["file.read", "file.tail", "file.stat"] {
            let (state, result) = op_as(&controller, &operator, name, &[("path", path)]).await;
            assert_refused(state, &result, "deny list");
        }
    }
    let (state, result) =
        op_as(&controller, &operator, "file.search", &[("path", &at(&tree.control)), ("pattern", "*")]).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let found: Vec<String> = op_output(&result).records.iter().map(|r| field(r, "path")).collect();
    assert_eq!(found.iter().filter(|p| p.ends_with("config.txt")).count(), 1, "{found:?}");
    for path in &paths {
        assert!(!found.contains(path), "{path} is denied, so not even named: {found:?}");
    }
    controller.stop().await;
}

/// H2: following a log never reads through a symlink, not at the start and not after a
/// rotation that leaves a symlink at the path.
#[tokio::test]
async fn h2_following_a_log_never_opens_anything_but_the_checked_path() {
    let tree = Tree::new().await;
    let controller = TestController::start().await;
    let _agent = tree.agent(&controller).await;
    let viewer = controller.principal("user", "vic", "viewer", None).await;
    let secret = tree.outside.join("secret.txt");
    let follow = |path: &Path| {
        op_request_with(
            HOST,
            "log.file",
            &[("path", &at(path)), ("lines", "2"), ("follow", "true")],
            false,
            Duration::from_secs(5),
        )
    };

    // The review's scenario: app.log is a symlink to a.log (inside the root); once following,
    // it is pointed at b.log and a.log is made a symlink to the secret. The old code re-checked
    // app.log but re-opened a.log and streamed the secret.
    let (a, b, link) =
        (tree.observe.join("a.log"), tree.observe.join("b.log"), tree.observe.join("link.log"));
    tokio::fs::write(&a, "a\n").await.expect("write");
    tokio::fs::write(&b, "b\n").await.expect("write");
    tokio::fs::symlink(&a, &link).await.expect("symlink");
    let swap = {
        let (a, b, link, secret) = (a.clone(), b.clone(), link.clone(), secret.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            tokio::fs::remove_file(&link).await.expect("rm");
            tokio::fs::symlink(&b, &link).await.expect("symlink");
            tokio::fs::remove_file(&a).await.expect("rm");
            tokio::fs::symlink(&secret, &a).await.expect("symlink");
        })
    };
    let (state, result, stdout) = run_as(&controller, &viewer, follow(&link)).await;
    swap.await.expect("swap");
    assert!(!stdout.contains("TOPSECRET") && !format!("{result:?}").contains("TOPSECRET"), "{stdout}");
    assert_refused(state, &result, "symbolic link");

    // A regular file rotated away and replaced by a symlink out of the root: the lines before
    // the rotation stream, the symlink is refused.
    let log = tree.observe.join("app.log");
    let mut stream =
        controller.fleet_as(&viewer).await.run_job(follow(&log)).await.expect("accepted").into_inner();
    let mut events = Vec::new();
    let mut rotated = false;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("did not hang")
        .expect("stream")
    {
        if !rotated && matches!(event.kind, Some(v1::job_event::Kind::Output(_))) {
            rotated = true;
            tokio::fs::rename(&log, tree.observe.join("app.log.1")).await.expect("rotate");
            tokio::fs::symlink(&secret, &log).await.expect("symlink");
        }
        events.push(event);
    }
    let stdout = output_of(&events, HOST, v1::OutputStream::Stdout);
    assert!(stdout.starts_with("event 49\nevent 50\n") && !stdout.contains("TOPSECRET"), "{stdout}");
    let finished = finished_by_host(&events).remove(HOST).expect("a result");
    assert_refused(finished.state(), &finished.result.unwrap_or_default(), "symbolic link");
    controller.stop().await;
}

/// A followed log that prints a key streams the log with the key's lines redacted.
#[tokio::test]
async fn followed_logs_redact_key_material() {
    let tree = Tree::new().await;
    let controller = TestController::start().await;
    let _agent = tree.agent(&controller).await;
    let viewer = controller.principal("user", "vic", "viewer", None).await;
    let log = tree.observe.join("app.log");
    let key = controller.admin.key_pem.clone();
    let request = op_request_with(
        HOST,
        "log.file",
        &[("path", &at(&log)), ("lines", "1"), ("follow", "true")],
        false,
        Duration::from_secs(4),
    );
    let mut stream =
        controller.fleet_as(&viewer).await.run_job(request).await.expect("accepted").into_inner();
    let mut events = Vec::new();
    let mut wrote = false;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("did not hang")
        .expect("stream")
    {
        if !wrote && matches!(event.kind, Some(v1::job_event::Kind::Output(_))) {
            wrote = true;
            let mut file = tokio::fs::OpenOptions::new().append(true).open(&log).await.expect("open");
            file.write_all(format!("dumping config\n{key}after the key\n").as_bytes()).await.expect("append");
        }
        events.push(event);
    }
    let stdout = output_of(&events, HOST, v1::OutputStream::Stdout);
    assert!(stdout.starts_with("event 50\ndumping config\n[line redacted"), "{stdout}");
    assert!(stdout.ends_with("after the key\n"), "{stdout}");
    for line in key.lines() {
        assert!(!stdout.contains(line), "{line} leaked: {stdout}");
    }
    controller.stop().await;
}

/// M1: what is checked is what is read. Symlinks inside a root are not followed (to a file or
/// a directory), a FIFO is refused without blocking, and a path swapped between a file and a
/// symlink while it is read never yields the symlink's target.
#[tokio::test]
async fn m1_symlinks_fifos_and_swaps_never_reach_outside() {
    let tree = Tree::new().await;
    let controller = TestController::start().await;
    let _agent = tree.agent(&controller).await;
    let viewer = controller.principal("user", "vic", "viewer", None).await;
    let secret = tree.outside.join("secret.txt");
    let escape = tree.observe.join("escape.log");
    let escape_dir = tree.observe.join("escape-dir");
    tokio::fs::symlink(&secret, &escape).await.expect("symlink");
    tokio::fs::symlink(&tree.outside, &escape_dir).await.expect("symlink");
    let fifo = tree.observe.join("pipe.log");
    assert!(sh(&format!("mkfifo '{}'", fifo.display())).await.status.success());

    for (name, params) in [
        ("file.read", vec![("path", at(&escape))]),
        ("file.tail", vec![("path", at(&escape))]),
        ("log.file", vec![("path", at(&escape))]),
        ("file.read", vec![("path", at(&escape_dir.join("secret.txt")))]),
        ("file.list", vec![("path", at(&escape_dir))]),
        ("file.search", vec![("path", at(&escape_dir)), ("pattern", "*".into())]),
        ("security.secrets", vec![("path", at(&escape_dir))]),
    ] {
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (state, result) = op_as(&controller, &viewer, name, &params).await;
        assert_refused(state, &result, "symbolic link");
        assert!(!result.error.contains("outside/"), "where the link leads is not said: {}", result.error);
    }
    // Described, not followed.
    let (_, result) = op_as(&controller, &viewer, "file.stat", &[("path", &at(&escape))]).await;
    assert_eq!(field(&op_output(&result).records[0], "type"), "symlink");
    let (_, result) =
        op_as(&controller, &viewer, "file.search", &[("path", &at(&tree.observe)), ("pattern", "secret*")])
            .await;
    assert!(op_output(&result).records.is_empty(), "the search did not enter escape-dir");

    for name in ["file.read", "file.tail", "log.file"] {
        let (state, result) = op_as(&controller, &viewer, name, &[("path", &at(&fifo))]).await;
        assert_eq!(state, v1::TargetState::Failed);
        assert!(result.error.contains("not a regular file"), "{name}: {}", result.error);
    }

    // A swapper flips notes.txt between a regular file and a symlink to the secret while the
    // viewer reads it again and again.
    let notes = tree.observe.join("notes.txt");
    let (plain, linked) = (tree.observe.join(".plain"), tree.observe.join(".linked"));
    tokio::fs::write(&notes, "harmless\n").await.expect("write");
    let swapping = tokio_util::sync::CancellationToken::new();
    let swapper = {
        let (notes, plain, linked, secret, swapping) =
            (notes.clone(), plain.clone(), linked.clone(), secret.clone(), swapping.clone());
        tokio::spawn(async move {
            let mut flips = 0u64;
            while !swapping.is_cancelled() {
                let _ = tokio::fs::remove_file(&linked).await;
                let _ = tokio::fs::symlink(&secret, &linked).await;
                let _ = tokio::fs::rename(&notes, &plain).await;
                let _ = tokio::fs::rename(&linked, &notes).await;
                let _ = tokio::fs::rename(&notes, &linked).await;
                let _ = tokio::fs::rename(&plain, &notes).await;
                flips += 1;
            }
            flips
        })
    };
    let mut read_plain = 0;
    for _ in 0..60 {
        let (state, result) = op_as(&controller, &viewer, "file.read", &[("path", &at(&notes))]).await;
        assert!(!format!("{result:?}").contains("TOPSECRET"), "the swap won: {result:?}");
        if state == v1::TargetState::Succeeded {
            read_plain += 1;
        }
    }
    swapping.cancel();
    assert!(swapper.await.expect("swapper") > 0);
    assert!(read_plain <= 60);
    controller.stop().await;
}

/// L11: a refusal reads the same whether the path exists, and never shows a symlink's target.
#[tokio::test]
async fn l11_refusals_do_not_tell_whether_a_path_exists() {
    let tree = Tree::new().await;
    let controller = TestController::start().await;
    let _agent = tree.agent(&controller).await;
    let viewer = controller.principal("user", "vic", "viewer", None).await;
    let operator = controller.principal("user", "olga", "operator", None).await;
    tokio::fs::write(tree.observe.join("shadow.bak"), "x\n").await.expect("write");

    let cases = [
        (&viewer, at(&tree.outside.join("secret.txt")), at(&tree.outside.join("missing.txt"))),
        (&viewer, at(&tree.control.join("config.txt")), at(&tree.control.join("missing.txt"))),
        (&operator, at(&tree.outside.join("secret.txt")), at(&tree.outside.join("missing.txt"))),
        (&viewer, at(&tree.observe.join("shadow.bak")), at(&tree.observe.join("shadow.old"))),
        (&operator, "/root/.profile".to_owned(), "/root/no-such-file".to_owned()),
    ];
    for (who, exists, missing) in cases {
        let (_, a) = op_as(&controller, who, "file.stat", &[("path", &exists)]).await;
        let (_, b) = op_as(&controller, who, "file.stat", &[("path", &missing)]).await;
        assert!(a.error.starts_with("refused:"), "{}", a.error);
        assert_eq!(a.error.replace(&exists, "PATH"), b.error.replace(&missing, "PATH"));
    }
    controller.stop().await;
}

/// L16: secret-scan findings name the file, line and kind and show none of the value.
#[tokio::test]
async fn l16_secret_scan_excerpts_show_no_part_of_a_secret() {
    let tree = Tree::new().await;
    let password = "Tr0ub4dor&3-horse";
    let token = "ghp_Zq3rT9vW2xY5aB7cD1eF4gH6iJ8kL0mN2pQ4";
    tokio::fs::write(tree.observe.join("deploy.log"), format!("DB_PASSWORD={password}\nGH_TOKEN={token}\n"))
        .await
        .expect("write");
    let controller = TestController::start().await;
    let _agent = tree.agent(&controller).await;
    let bridge = controller.principal("bridge", "claude", "mcp", None).await;
    let (state, result) =
        op_as(&controller, &bridge, "security.secrets", &[("path", &at(&tree.observe))]).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let excerpts: Vec<String> = op_output(&result).records.iter().map(|r| field(r, "excerpt")).collect();
    assert_eq!(excerpts, ["DB_PASSWORD=…", "ghp_…"]);
    let everything = format!("{result:?}");
    for part in [&password[..4], &password[4..], &token[4..8]] {
        assert!(!everything.contains(part), "{part} leaked");
    }
    controller.stop().await;
}

/// H3 as the issue tells it, from the `mcp` role: a search with a pathological pattern ends
/// promptly and the host stays online; too many wildcard groups are refused up front.
#[tokio::test]
async fn h3_a_pathological_pattern_neither_hangs_nor_unplugs_the_host() {
    let tree = Tree::new().await;
    for name in ["ca-certificates.conf", "adduser.conf", "deluser.conf", "ld.so.conf", "nsswitch.conf"] {
        let dir = tree.observe.join("etc");
        tokio::fs::create_dir_all(&dir).await.expect("mkdir");
        tokio::fs::write(dir.join(name), "x\n").await.expect("write");
    }
    let controller = TestController::start().await;
    let _agent = tree.agent(&controller).await;
    let bridge = controller.principal("bridge", "claude", "mcp", None).await;
    let pattern = format!("{}#", "*".repeat(30));
    let request = op_request_with(
        HOST,
        "file.search",
        &[("path", &at(&tree.observe)), ("pattern", &pattern)],
        false,
        Duration::from_secs(10),
    );
    let (state, result, _) = run_as(&controller, &bridge, request).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert!(op_output(&result).records.is_empty());
    // The most wildcard groups allowed, over the same tree: as quick.
    let pattern = format!("{}#", "*a".repeat(16));
    let (state, result) =
        op_as(&controller, &bridge, "file.search", &[("path", &at(&tree.observe)), ("pattern", &pattern)])
            .await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    // Heartbeats kept flowing: the host is online after a few of its intervals.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(controller.host(HOST).await.expect("host").online);

    let err = controller
        .fleet_as(&bridge)
        .await
        .run_job(op_request(
            HOST,
            "file.search",
            &[("path", &at(&tree.observe)), ("pattern", &"*a".repeat(17))],
            false,
        ))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most 16"), "{}", err.message());
    controller.stop().await;
}
