//! `container.<name>.{image,state,ports}` for every container, running or not (`ports` as
//! docker prints them, absent when none are published), and `capability.docker`, when the
//! docker CLI is installed and the daemon answers.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{Facts, command, insert};

const ARGS: &[&str] = &["ps", "--all", "--no-trunc", "--format", "{{json .}}"];

pub(super) async fn collect(program: &Path, timeout: Duration) -> Facts {
    // `docker ps` fails when the daemon is down or the socket is not ours to use: the CLI
    // alone is no capability.
    match command::run(program, ARGS, timeout).await {
        Some(output) => parse(&output),
        None => Facts::new(),
    }
}

/// One JSON object per line. Read as loose JSON rather than a struct because the fields vary
/// by engine version (`State` is missing before Docker 20.10's API; podman's `docker` shim
/// gives `Names` as a list).
fn parse(output: &str) -> Facts {
    let mut facts = Facts::new();
    insert(&mut facts, "capability.docker", "yes");
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let container: Value = match serde_json::from_str(line) {
            Ok(value) => value,
            Err(e) => {
                tracing::debug!(error = %e, "unexpected `docker ps` line");
                continue;
            }
        };
        let Some(name) = primary_name(&container) else {
            continue;
        };
        let text = |field: &str| container.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
        let state = container
            .get("State")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| state_from_status(&text("Status")).to_owned());
        insert(&mut facts, format!("container.{name}.image"), text("Image"));
        insert(&mut facts, format!("container.{name}.state"), state);
        insert(&mut facts, format!("container.{name}.ports"), text("Ports"));
    }
    facts
}

/// The container's own name. Docker lists legacy link aliases after it (`web,app/web`).
fn primary_name(container: &Value) -> Option<String> {
    let names = container.get("Names")?;
    let first = match names {
        Value::String(s) => s.split(',').next()?,
        Value::Array(items) => items.first()?.as_str()?,
        _ => return None,
    };
    let first = first.trim().trim_start_matches('/');
    (!first.is_empty()).then(|| first.to_owned())
}

/// The state word of a human status (`Up 3 hours`, `Exited (0) 2 days ago`).
fn state_from_status(status: &str) -> &'static str {
    match status.split_whitespace().next() {
        Some("Up") if status.contains("(Paused)") => "paused",
        Some("Up") => "running",
        Some("Exited") => "exited",
        Some("Created") => "created",
        Some("Restarting") => "restarting",
        Some("Removal") => "removing",
        Some("Dead") => "dead",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testutil::fake_program;

    /// Docker 26 `docker ps --all --no-trunc --format '{{json .}}'`.
    const PS: &str = r#"{"Command":"\"/s6-init\"","CreatedAt":"2024-10-12 09:14:02 +0200 CEST","ID":"8c0e6a5f3b1d2e4f6a8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f","Image":"pihole/pihole:2024.07.0","Labels":"org.opencontainers.image.title=pihole","LocalVolumes":"0","Mounts":"/srv/pihole/etc,/srv/pihole/dnsmasq","Names":"pihole","Networks":"bridge","Ports":"0.0.0.0:53->53/tcp, 0.0.0.0:53->53/udp, 0.0.0.0:8081->80/tcp","RunningFor":"3 weeks ago","Size":"0B","State":"running","Status":"Up 5 days (healthy)"}
{"Command":"\"/docker-entrypoint.sh postgres\"","CreatedAt":"2024-09-01 18:00:00 +0200 CEST","ID":"1f2e3d4c5b6a79880716253443526170819a0b1c2d3e4f5061728394a5b6c7d8","Image":"postgres:16-alpine","Labels":"","LocalVolumes":"1","Mounts":"4c1d…","Names":"db,web/db","Networks":"app","Ports":"","RunningFor":"2 months ago","Size":"0B","State":"exited","Status":"Exited (0) 3 days ago"}
{"Command":"\"/portainer\"","CreatedAt":"2024-09-01 18:00:00 +0200 CEST","ID":"9a8b7c6d5e4f30211203948576abcdef0123456789abcdef0123456789abcdef","Image":"portainer/portainer-ce:2.21.4","Labels":"","LocalVolumes":"1","Mounts":"portainer_data","Names":"portainer","Networks":"bridge","Ports":"0.0.0.0:9443->9443/tcp, :::9443->9443/tcp","RunningFor":"2 months ago","Size":"0B","Status":"Up 2 weeks (Paused)"}
"#;

    #[test]
    fn parses_containers() {
        let facts = parse(PS);
        assert_eq!(facts["capability.docker"], "yes");
        assert_eq!(facts["container.pihole.image"], "pihole/pihole:2024.07.0");
        assert_eq!(facts["container.pihole.state"], "running");
        assert_eq!(
            facts["container.pihole.ports"],
            "0.0.0.0:53->53/tcp, 0.0.0.0:53->53/udp, 0.0.0.0:8081->80/tcp"
        );
        // Named by its own name, not its link alias; no ports, no key.
        assert_eq!(facts["container.db.image"], "postgres:16-alpine");
        assert_eq!(facts["container.db.state"], "exited");
        assert!(!facts.contains_key("container.db.ports"));
        // An engine without `State`: derived from the status.
        assert_eq!(facts["container.portainer.state"], "paused");
        assert_eq!(facts.len(), 9);
    }

    #[test]
    fn podman_names_and_junk_lines() {
        let facts = parse(
            "{\"Names\":[\"web\"],\"Image\":\"docker.io/library/nginx:latest\",\"State\":\"running\"}\nWARNING: something\n",
        );
        assert_eq!(facts["container.web.image"], "docker.io/library/nginx:latest");
        assert_eq!(facts["container.web.state"], "running");
        // A daemon with no containers still answered.
        assert_eq!(parse(""), [("capability.docker".to_owned(), "yes".to_owned())].into());
    }

    #[tokio::test]
    async fn runs_the_configured_cli_with_the_exact_arguments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let docker = fake_program(dir.path(), "docker", ARGS, PS).await;
        assert_eq!(collect(&docker, Duration::from_secs(10)).await, parse(PS));
        let down = crate::facts::testutil::script(
            dir.path(),
            "docker-down",
            "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2; exit 1",
        )
        .await;
        assert!(collect(&down, Duration::from_secs(10)).await.is_empty());
    }
}
