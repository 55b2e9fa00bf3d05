//! Container operations against the real Docker Engine on this machine. No registry can be
//! reached, so the test builds its own image: `docker import` of a root filesystem made of this
//! machine's `dash` and `sleep` with the libraries they load. Without an engine these tests skip
//! with a message, except under CI (`CI=true`), where a missing engine is a failure.

use std::path::Path;

use tailops_agent::ops::OpsConfig;
use tailops_proto::v1;
use tailops_tests::*;

const IMAGE: &str = "tailops-test/sleeper:1";

/// Whether the engine answers; panics under CI when it does not.
async fn docker_available() -> bool {
    let ok = sh("docker info >/dev/null 2>&1").await.status.success();
    if !ok {
        assert!(std::env::var("CI").is_err(), "CI=true but no Docker Engine answers `docker info`");
        eprintln!("skipped: no Docker Engine here (docker info failed)");
    }
    ok
}

/// Imports the sleeper image (idempotent).
async fn build_image(dir: &Path) {
    let root = dir.join("rootfs");
    let script = format!(
        r#"set -e
mkdir -p '{root}/bin' '{root}/tmp'
cp /usr/bin/dash '{root}/bin/sh'
cp /usr/bin/sleep '{root}/bin/sleep'
for lib in $( (ldd /usr/bin/dash; ldd /usr/bin/sleep) | grep -o '/[^ ]*' | sort -u); do
  mkdir -p "{root}$(dirname "$lib")"
  cp -L "$lib" "{root}$lib"
done
tar -C '{root}' -c . | docker import - {IMAGE} >/dev/null"#,
        root = root.display()
    );
    let out = sh(&script).await;
    assert!(out.status.success(), "building the test image: {}", text(&out.stderr));
}

/// A running container, removed when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        // Drop cannot await; a blocking cleanup at the end of a test is fine.
        #[allow(clippy::disallowed_methods)]
        let _ = std::process::Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

async fn start_container(name: &str) -> Container {
    let _ = sh(&format!("docker rm -f {name} >/dev/null 2>&1")).await;
    let out = sh(&format!(
        "docker run -d --stop-timeout 1 --name {name} {IMAGE} /bin/sh -c 'echo hello from {name}; echo oops >&2; exec /bin/sleep 600'"
    ))
    .await;
    assert!(out.status.success(), "docker run: {}", text(&out.stderr));
    Container(name.to_owned())
}

fn records(result: &v1::CommandResult) -> Vec<std::collections::BTreeMap<String, String>> {
    let Some(v1::action_output::Kind::Operation(out)) = result.output.as_ref().and_then(|o| o.kind.clone())
    else {
        panic!("no output: {}", result.error);
    };
    out.records
        .iter()
        .map(|r| {
            r.fields
                .iter()
                .map(|(k, v)| {
                    let text = match &v.value {
                        Some(v1::scalar::Value::Text(t)) => t.clone(),
                        other => format!("{other:?}"),
                    };
                    (k.clone(), text)
                })
                .collect()
        })
        .collect()
}

fn summary(result: &v1::CommandResult) -> String {
    match result.output.as_ref().and_then(|o| o.kind.clone()) {
        Some(v1::action_output::Kind::Operation(out)) => out.summary,
        _ => String::new(),
    }
}

#[tokio::test]
async fn containers_are_listed_inspected_logged_and_restarted() {
    if !docker_available().await {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    build_image(dir.path()).await;
    let name = format!("tailops-test-{}", std::process::id());
    let _container = start_container(&name).await;
    let controller = TestController::start().await;
    let _agent = controller.agent_with("dock", &[], None, OpsConfig::default()).await;

    let (state, result) = run_op(&controller, "dock", "container.list", &[], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let mine = records(&result).into_iter().find(|r| r["name"] == name).expect("listed");
    assert_eq!((mine["image"].as_str(), mine["state"].as_str()), (IMAGE, "running"));

    let (_, result) = run_op(&controller, "dock", "container.images", &[], false).await;
    assert!(records(&result).iter().any(|r| format!("{}:{}", r["repository"], r["tag"]) == IMAGE));

    let (_, result) = run_op(&controller, "dock", "container.inspect", &[("container", &name)], false).await;
    let fields: std::collections::BTreeMap<String, String> =
        records(&result).into_iter().map(|r| (r["property"].clone(), r["value"].clone())).collect();
    assert_eq!(fields["state"], "running");
    assert_eq!(fields["image"], IMAGE);

    let (_, result) =
        run_op(&controller, "dock", "container.logs", &[("container", &name), ("lines", "10")], false).await;
    let lines: Vec<String> = records(&result).into_iter().map(|r| r["line"].clone()).collect();
    assert!(lines.iter().any(|l| l.ends_with(&format!("hello from {name}"))), "{lines:?}");
    assert!(lines.iter().any(|l| l.ends_with("oops")), "stderr too: {lines:?}");

    // A dry run changes nothing; the real stop does; start brings it back.
    let (state, result) = run_op(&controller, "dock", "container.stop", &[("container", &name)], true).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert!(
        summary(&result).starts_with(&format!("would run: docker stop -- {name}")),
        "{}",
        summary(&result)
    );
    let running = sh(&format!("docker inspect -f '{{{{.State.Running}}}}' {name}")).await;
    assert_eq!(text(&running.stdout).trim(), "true");

    let (state, result) = run_op(&controller, "dock", "container.stop", &[("container", &name)], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert!(summary(&result).contains("is exited"), "{}", summary(&result));
    let (_, result) = run_op(&controller, "dock", "container.start", &[("container", &name)], false).await;
    assert!(summary(&result).contains("is running"), "{}", summary(&result));

    // A name the host does not have is refused before docker is asked to act.
    let (state, result) =
        run_op(&controller, "dock", "container.restart", &[("container", "no-such-container-x")], false)
            .await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.error.contains("no container named \"no-such-container-x\""), "{}", result.error);
    controller.stop().await;
}

#[tokio::test]
async fn a_host_without_docker_says_so() {
    let controller = TestController::start().await;
    let ops = OpsConfig { docker: "/nonexistent/docker".into(), ..OpsConfig::default() };
    let _agent = controller.agent_with("nodock", &[], None, ops).await;
    let (state, result) = run_op(&controller, "nodock", "container.list", &[], false).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.not_available, "{}", result.error);
    assert!(result.error.contains("docker"), "{}", result.error);
    controller.stop().await;
}

#[tokio::test]
async fn pulling_says_what_it_would_run_and_reports_registry_errors() {
    if !docker_available().await {
        return;
    }
    let controller = TestController::start().await;
    let _agent = controller.agent_with("dock", &[], None, OpsConfig::default()).await;
    let image = "registry.invalid/tailops/none:1";
    let (state, result) = run_op(&controller, "dock", "container.pull", &[("image", image)], true).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert_eq!(summary(&result), format!("would run: docker pull --quiet -- {image}"));
    // No registry is reachable here: the pull fails, and says why.
    let (state, result) = run_op(&controller, "dock", "container.pull", &[("image", image)], false).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.error.starts_with("docker pull:"), "{}", result.error);
    controller.stop().await;
}

/// The real engine here may lack the Compose plugin; then the answer must be "not available".
/// The project operations themselves run against a stand-in `docker` that accepts only the
/// exact argv (with the project's own config file) and replays output captured from Compose 2.29.
#[tokio::test]
async fn compose_projects_are_found_by_name_and_updated_with_pull_then_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls.log");
    let docker = dir.path().join("docker");
    let base = "compose -p web -f /srv/web/compose.yaml";
    let body = format!(
        r#"#!/bin/sh
echo "$*" >> '{log}'
case "$*" in
  "compose ls --all --format json") echo '[{{"Name":"web","Status":"running(2)","ConfigFiles":"/srv/web/compose.yaml"}}]' ;;
  "{base} ps --all --format json")
    echo '{{"Name":"web-app-1","Service":"app","Image":"ghcr.io/acme/app:2","State":"running","Status":"Up 3 hours","Publishers":[{{"URL":"0.0.0.0","TargetPort":8080,"PublishedPort":80,"Protocol":"tcp"}}]}}'
    echo '{{"Name":"web-db-1","Service":"db","Image":"postgres:16","State":"running","Status":"Up 3 hours","Publishers":[]}}' ;;
  "{base} pull") echo ' app Pulled' >&2 ;;
  "{base} up -d") echo ' Container web-app-1  Started' >&2 ;;
  *) echo "unexpected argv: $*" >&2; exit 64 ;;
esac
"#,
        log = log.display()
    );
    tokio::fs::write(&docker, body).await.expect("script");
    assert!(sh(&format!("chmod 755 '{}'", docker.display())).await.status.success());
    let controller = TestController::start().await;
    let _fake = controller.agent_with("fake", &[], None, OpsConfig { docker, ..OpsConfig::default() }).await;
    let calls = || async { tokio::fs::read_to_string(&log).await.unwrap_or_default() };

    let (state, result) = run_op(&controller, "fake", "compose.status", &[("project", "web")], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let services = records(&result);
    assert_eq!(services.len(), 2);
    assert_eq!(services[0]["ports"], "0.0.0.0:80->8080");

    let (_, result) = run_op(&controller, "fake", "compose.update", &[("project", "web")], true).await;
    assert!(
        summary(&result).starts_with(&format!("would run: docker {base} pull; then docker {base} up -d")),
        "{}",
        summary(&result)
    );
    assert!(!calls().await.contains("pull"), "the dry run pulled");

    let (state, result) = run_op(&controller, "fake", "compose.update", &[("project", "web")], false).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let log_text = calls().await;
    let pull = log_text.find(&format!("{base} pull")).expect("pulled");
    let up = log_text.find(&format!("{base} up -d")).expect("up");
    assert!(pull < up, "pull comes before up: {log_text}");

    let (state, result) = run_op(&controller, "fake", "compose.down", &[("project", "shop")], false).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.error.contains("no Compose project \"shop\""), "{}", result.error);

    if docker_available().await {
        let _real = controller.agent_with("real", &[], None, OpsConfig::default()).await;
        let plugin = sh("docker compose version >/dev/null 2>&1").await.status.success();
        let (state, result) = run_op(&controller, "real", "compose.list", &[], false).await;
        if plugin {
            assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
        } else {
            assert!(result.not_available && result.error.contains("compose plugin"), "{}", result.error);
        }
    }
    controller.stop().await;
}

#[tokio::test]
async fn update_recreates_a_container_on_a_new_image_with_the_same_configuration() {
    if !docker_available().await {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = format!("tailops-test/updatable:{}", std::process::id());
    let name = format!("tailops-update-{}", std::process::id());
    let import = |marker: &'static str| {
        let root = dir.path().join(marker);
        let tag = tag.clone();
        async move {
            let script = format!(
                r#"set -e
mkdir -p '{root}/bin'
cp /usr/bin/dash '{root}/bin/sh'
cp /usr/bin/sleep '{root}/bin/sleep'
echo {marker} > '{root}/version'
for lib in $( (ldd /usr/bin/dash; ldd /usr/bin/sleep) | grep -o '/[^ ]*' | sort -u); do
  mkdir -p "{root}$(dirname "$lib")"; cp -L "$lib" "{root}$lib"
done
tar -C '{root}' -c . | docker import - {tag}"#,
                root = root.display()
            );
            let out = sh(&script).await;
            assert!(out.status.success(), "import: {}", text(&out.stderr));
            text(&out.stdout).trim().to_owned()
        }
    };
    let v1_id = import("v1").await;
    let _ = sh(&format!("docker rm -f {name} >/dev/null 2>&1")).await;
    let run = sh(&format!(
        "docker run -d --stop-timeout 1 --name {name} -e GREETING=hi --label team=ops --restart unless-stopped {tag} /bin/sleep 600"
    ))
    .await;
    assert!(run.status.success(), "{}", text(&run.stderr));
    let _cleanup = Container(name.clone());
    let controller = TestController::start().await;
    let _agent = controller.agent_with("dock", &[], None, OpsConfig::default()).await;

    let (_, result) =
        run_op(&controller, "dock", "container.update", &[("container", &name), ("pull", "false")], false)
            .await;
    assert!(summary(&result).contains("already runs the newest"), "{} {}", summary(&result), result.error);

    let v2_id = import("v2").await;
    assert_ne!(v1_id, v2_id);
    let (state, result) =
        run_op(&controller, "dock", "container.update", &[("container", &name), ("pull", "false")], true)
            .await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    assert!(summary(&result).starts_with(&format!("would recreate {name}")), "{}", summary(&result));
    let still = sh(&format!("docker inspect -f '{{{{.Image}}}}' {name}")).await;
    assert_eq!(text(&still.stdout).trim(), v1_id, "the dry run changed the container");

    let (state, result) =
        run_op(&controller, "dock", "container.update", &[("container", &name), ("pull", "false")], false)
            .await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let after = sh(&format!(
        "docker inspect -f '{{{{.Image}}}} {{{{.State.Running}}}} {{{{.HostConfig.RestartPolicy.Name}}}} {{{{index .Config.Labels \"team\"}}}} {{{{.Config.Env}}}}' {name}"
    ))
    .await;
    let after = text(&after.stdout);
    assert!(after.starts_with(&format!("{v2_id} true unless-stopped ops")), "{after}");
    assert!(after.contains("GREETING=hi"), "{after}");
    let parked = sh(&format!("docker inspect {name}.tailops-old >/dev/null 2>&1")).await;
    assert!(!parked.status.success(), "the old container was removed");
    let _ = sh(&format!("docker rmi -f {tag} {v1_id} >/dev/null 2>&1")).await;
    controller.stop().await;
}

#[tokio::test]
async fn container_logs_can_be_followed_live() {
    if !docker_available().await {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    build_image(dir.path()).await;
    let name = format!("tailops-ticker-{}", std::process::id());
    let _ = sh(&format!("docker rm -f {name} >/dev/null 2>&1")).await;
    let started = sh(&format!(
        "docker run -d --stop-timeout 1 --name {name} {IMAGE} /bin/sh -c 'i=0; while :; do i=$((i+1)); echo tick $i; /bin/sleep 0.2; done'"
    ))
    .await;
    assert!(started.status.success(), "{}", text(&started.stderr));
    let _cleanup = Container(name.clone());
    let controller = TestController::start().await;
    let _agent = controller.agent_with("dock", &[], None, OpsConfig::default()).await;

    let request = v1::RunJobRequest {
        selector: Some(v1::HostSelector { hosts: vec!["dock".into()], ..Default::default() }),
        action: Some(v1::JobAction {
            elevated: false,
            kind: Some(v1::job_action::Kind::Operation(v1::OperationAction {
                name: "container.logs".into(),
                params: [("container", name.as_str()), ("lines", "1"), ("follow", "true")]
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                dry_run: false,
            })),
        }),
        timeout_ms: 3_000,
        ..Default::default()
    };
    let events =
        collect_events(controller.fleet().await.run_job(request).await.expect("accepted").into_inner()).await;
    let streamed = output_of(&events, "dock", v1::OutputStream::Stdout);
    let ticks: Vec<u32> = streamed
        .lines()
        .filter_map(|l| l.rsplit_once("tick ").and_then(|(_, n)| n.trim().parse().ok()))
        .collect();
    assert!(ticks.len() >= 3, "several lines arrived while following: {streamed}");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "in order, none missing: {ticks:?}");
    let result = finished_by_host(&events).remove("dock").expect("result").result.unwrap_or_default();
    assert_eq!(result.exit_code, Some(0), "{}", result.error);
    assert!(summary(&result).contains("until the job's deadline"), "{}", summary(&result));
    controller.stop().await;
}
