//! Containers through the `docker` CLI (Podman's `docker` shim answers the same commands). A
//! container is looked up on the host before anything acts on it, so only names the host
//! actually has are used; names reach argv after `--`.

use std::time::Duration;

use serde_json::Value;
use tailops_ops::Validated;
use tailops_proto::v1;

use super::output::{Cell, Table};
use super::tool::{self, Ran};
use super::{LiveOutput, OpError, OpsConfig};

pub async fn run(
    op: &Validated,
    config: &OpsConfig,
    timeout: Duration,
    live: &LiveOutput,
) -> Result<v1::OperationOutput, OpError> {
    let docker = &Docker::locate(config, timeout).await?;
    if op.spec.name == "container.update" {
        return update(op, docker, config).await;
    }
    if op.spec.family() == "compose" {
        return compose(op, docker).await;
    }
    let verb = op.spec.name.trim_start_matches("container.");
    let name = op.text("container").unwrap_or_default();
    match verb {
        "pull" => {
            let image = op.text("image").unwrap_or_default();
            let argv = ["docker", "pull", "--quiet", "--", image];
            let mut table = Table::new(&["image", "reference"]);
            table.step(&argv);
            if op.dry_run {
                table.summary(format!("would run: {}", argv.join(" ")));
                return Ok(table.finish());
            }
            let ran = checked(docker.run(&argv[1..]).await?, "docker pull")?;
            table.row([Cell::from(image), Cell::from(ran.stdout.trim())]);
            table.summary(format!("pulled {image}"));
            Ok(table.finish())
        }
        "list" => {
            let argv = ["ps", "--all", "--no-trunc", "--format", "{{json .}}"];
            let rows = json_lines(&checked(docker.run(&argv).await?, "docker ps")?.stdout)?;
            let mut table = Table::new(&["name", "image", "state", "status", "ports", "id"]);
            for c in &rows {
                table.row([
                    field(c, "Names").into(),
                    field(c, "Image").into(),
                    field(c, "State").into(),
                    field(c, "Status").into(),
                    field(c, "Ports").into(),
                    Cell::from(field(c, "ID").chars().take(12).collect::<String>()),
                ]);
            }
            table.step(&prefixed(&argv));
            table.summary(format!("{} container(s)", rows.len()));
            Ok(table.finish())
        }
        "inspect" => {
            let c = inspect(docker, name).await?;
            let mut table = Table::new(&["property", "value"]);
            for (key, value) in summary_fields(&c) {
                table.row([Cell::from(key), Cell::from(value)]);
            }
            table.step(&["docker", "inspect", "--type", "container", "--", name]);
            table.summary(format!("{name}: {}", pointer(&c, "/State/Status")));
            Ok(table.finish())
        }
        "logs" if op.flag("follow") => {
            inspect(docker, name).await?;
            let lines = op.int("lines").unwrap_or(100).to_string();
            let argv = ["logs", "--follow", "--tail", lines.as_str(), "--timestamps", "--", name];
            follow(&docker.path, &argv, super::logs::follow_budget(timeout), live).await
        }
        "logs" => {
            inspect(docker, name).await?;
            let lines = op.int("lines").unwrap_or(100).to_string();
            let argv = ["logs", "--tail", lines.as_str(), "--timestamps", "--", name];
            let ran = checked(docker.run(&argv).await?, "docker logs")?;
            // A container's stdout and stderr arrive on the CLI's two streams; show both.
            let mut table = Table::new(&["line"]);
            for line in ran.stdout.lines().chain(ran.stderr.lines()) {
                table.row([Cell::from(line)]);
            }
            table.step(&prefixed(&argv));
            let n = table.len();
            table.summary(format!("last {n} line(s) of {name}"));
            Ok(table.finish())
        }
        "stats" => {
            let argv = ["stats", "--no-stream", "--no-trunc", "--format", "{{json .}}"];
            let rows = json_lines(&checked(docker.run(&argv).await?, "docker stats")?.stdout)?;
            let mut table =
                Table::new(&["name", "cpu", "memory", "memory_percent", "net_io", "block_io", "pids"]);
            for c in &rows {
                table.row([
                    field(c, "Name").into(),
                    field(c, "CPUPerc").into(),
                    field(c, "MemUsage").into(),
                    field(c, "MemPerc").into(),
                    field(c, "NetIO").into(),
                    field(c, "BlockIO").into(),
                    field(c, "PIDs").into(),
                ]);
            }
            table.step(&prefixed(&argv));
            table.summary(format!("{} running container(s)", rows.len()));
            Ok(table.finish())
        }
        "images" => {
            let argv = ["image", "ls", "--no-trunc", "--format", "{{json .}}"];
            let rows = json_lines(&checked(docker.run(&argv).await?, "docker image ls")?.stdout)?;
            let mut table = Table::new(&["repository", "tag", "id", "size", "created"]);
            for i in &rows {
                table.row([
                    field(i, "Repository").into(),
                    field(i, "Tag").into(),
                    Cell::from(
                        field(i, "ID").trim_start_matches("sha256:").chars().take(12).collect::<String>(),
                    ),
                    field(i, "Size").into(),
                    field(i, "CreatedSince").into(),
                ]);
            }
            table.step(&prefixed(&argv));
            table.summary(format!("{} image(s)", rows.len()));
            Ok(table.finish())
        }
        "start" | "stop" | "restart" => {
            let before = inspect(docker, name).await?;
            let argv = ["docker", verb, "--", name];
            let mut table = Table::new(&["property", "value"]);
            table.step(&argv);
            let state = pointer(&before, "/State/Status");
            if op.dry_run {
                table.summary(format!("would run: {} ({name} is {state})", argv.join(" ")));
                return Ok(table.finish());
            }
            checked(docker.run(&argv[1..]).await?, &format!("docker {verb}"))?;
            let after = inspect(docker, name).await?;
            for key in ["/State/Status", "/State/StartedAt", "/RestartCount"] {
                table.row([Cell::from(key.trim_start_matches('/')), Cell::from(pointer(&after, key))]);
            }
            table.summary(format!("{verb}: {name} was {state}, is {}", pointer(&after, "/State/Status")));
            Ok(table.finish())
        }
        other => Err(OpError::NotAvailable(format!("container.{other} is not implemented by this agent"))),
    }
}

/// Streams `docker logs --follow` (the container's stdout and stderr, as the CLI splits them)
/// until `budget` runs out or nobody listens; the CLI dies with the future (`kill_on_drop`).
async fn follow(
    docker: &std::path::Path,
    argv: &[&str],
    budget: Duration,
    live: &LiveOutput,
) -> Result<v1::OperationOutput, OpError> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(docker)
        .args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| OpError::Failed(format!("cannot run {}: {e}", docker.display())))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(OpError::Failed("docker logs: no output pipes".into()));
    };
    let mut out = BufReader::new(stdout).lines();
    let mut err = BufReader::new(stderr).lines();
    let deadline = tokio::time::Instant::now() + budget;
    let (mut streamed, mut open) = (0u64, (true, true));
    let stopped = loop {
        let line = tokio::select! {
            () = tokio::time::sleep_until(deadline) => break "until the job's deadline",
            line = out.next_line(), if open.0 => line.map_err(|e| e.to_string()).map(|l| l.or_else(|| { open.0 = false; None })),
            line = err.next_line(), if open.1 => line.map_err(|e| e.to_string()).map(|l| l.or_else(|| { open.1 = false; None })),
            else => break "until the container's log ended",
        };
        match line {
            Ok(Some(line)) => {
                streamed += 1;
                if !live.line(&line).await {
                    break "until nobody listened any more";
                }
            }
            Ok(None) => {}
            Err(e) => return Err(OpError::Failed(format!("reading docker logs: {e}"))),
        }
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    let mut table = Table::new(&["streamed_lines", "stopped"]);
    table.row([Cell::from(streamed), Cell::from(stopped)]);
    table.step(&prefixed(argv));
    table.summary(format!("followed the container's log: {streamed} line(s) streamed {stopped}"));
    Ok(table.finish())
}

/// Pulls the container's image (unless `pull=false`) and, when the image changed, recreates the
/// container with its full configuration on the new image. The old container is renamed, not
/// removed, until the new one runs; any failure puts the old one back.
async fn update(op: &Validated, docker: &Docker, config: &OpsConfig) -> Result<v1::OperationOutput, OpError> {
    let name = op.text("container").unwrap_or_default();
    let cli = |args: &[&str]| args.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    let before = inspect(docker, name).await?;
    let image = pointer(&before, "/Config/Image");
    let old_image_id = pointer(&before, "/Image");
    let was_running = before.pointer("/State/Running").and_then(Value::as_bool).unwrap_or(false);
    let parked = format!("{name}.tailops-old");
    let mut table = Table::new(&["step", "result"]);

    if op.flag("pull") {
        let argv = ["pull", "--quiet", "--", image.as_str()];
        table.step(&prefixed(&argv));
        if !op.dry_run {
            checked(docker.run(&argv).await?, "docker pull")?;
        }
    }
    let id_args = ["image", "inspect", "--format", "{{.Id}}", "--", image.as_str()];
    let new_image_id = checked(docker.run(&id_args).await?, "docker image inspect")?.stdout.trim().to_owned();
    if new_image_id == old_image_id {
        table.summary(format!("{name} already runs the newest {image}; nothing to do"));
        return Ok(table.finish());
    }
    let plan: Vec<Vec<String>> = [
        was_running.then(|| cli(&["docker", "stop", "--", name])),
        Some(cli(&["docker", "rename", name, &parked])),
        Some(cli(&[
            "POST",
            &format!("/containers/create?name={name}"),
            "(the same configuration, on",
            &image,
            ")",
        ])),
        was_running.then(|| cli(&["docker", "start", "--", name])),
        Some(cli(&["docker", "rm", "--", &parked])),
    ]
    .into_iter()
    .flatten()
    .collect();
    for step in &plan {
        table.step(step);
    }
    if op.dry_run {
        table.summary(format!(
            "would recreate {name} on {image} ({} -> {})",
            short(&old_image_id),
            short(&new_image_id)
        ));
        return Ok(table.finish());
    }

    if was_running {
        checked(docker.run(&["stop", "--", name]).await?, "docker stop")?;
    }
    checked(docker.run(&["rename", name, &parked]).await?, "docker rename")?;
    let parked_ref = parked.as_str();
    let restore = |reason: OpError| async move {
        let _ = docker.run(&["rm", "--force", "--", name]).await;
        let _ = docker.run(&["rename", parked_ref, name]).await;
        if was_running {
            let _ = docker.run(&["start", "--", name]).await;
        }
        OpError::Failed(format!("{reason}; the old container was put back"))
    };
    let body = super::docker_api::create_body(&before, &image);
    let created = match super::docker_api::create(&config.docker_socket, name, &body).await {
        Ok(id) => id,
        Err(e) => return Err(restore(e).await),
    };
    table.row([Cell::from("created"), Cell::from(short(&created))]);
    if was_running {
        let started = match docker.run(&["start", "--", name]).await {
            Ok(ran) => checked(ran, "docker start"),
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            return Err(restore(e).await);
        }
        table.row([Cell::from("started"), Cell::from(name)]);
    }
    checked(docker.run(&["rm", "--", &parked]).await?, "docker rm")?;
    table.row([Cell::from("removed"), Cell::from(parked)]);
    table.summary(format!(
        "recreated {name} on {image} ({} -> {})",
        short(&old_image_id),
        short(&new_image_id)
    ));
    Ok(table.finish())
}

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// A Compose project as `docker compose ls` reports it.
#[derive(Debug, Clone)]
struct Project {
    name: String,
    status: String,
    config_files: Vec<String>,
}

/// `compose.*`: projects are looked up with `docker compose ls` first; their own config files
/// are passed back with `-f`, so the agent acts on exactly the project the host knows.
async fn compose(op: &Validated, docker: &Docker) -> Result<v1::OperationOutput, OpError> {
    let ls = docker.run(&["compose", "ls", "--all", "--format", "json"]).await?;
    if !ls.success() {
        let text = format!("{}{}", ls.stderr, ls.stdout);
        // Without the plugin the CLI parses `compose ...` as its own arguments and exits 125.
        if ls.status == Some(125)
            || text.contains("is not a docker command")
            || text.contains("unknown command")
        {
            return Err(OpError::NotAvailable("the docker compose plugin is not installed".into()));
        }
        return Err(OpError::Failed(format!("docker compose ls: {}", ls.complaint())));
    }
    let projects = parse_compose_ls(&ls.stdout)?;
    if op.spec.name == "compose.list" {
        let mut table = Table::new(&["project", "status", "config_files"]);
        for p in &projects {
            table.row([
                Cell::from(p.name.clone()),
                Cell::from(p.status.clone()),
                Cell::from(p.config_files.join(",")),
            ]);
        }
        table.summary(format!("{} project(s)", projects.len()));
        return Ok(table.finish());
    }
    let wanted = op.text("project").unwrap_or_default();
    let project = projects.iter().find(|p| p.name == wanted).ok_or_else(|| {
        OpError::Refused(format!("no Compose project {wanted:?} on this host; `compose.list` shows them"))
    })?;
    let mut base: Vec<String> = vec!["compose".into(), "-p".into(), project.name.clone()];
    for file in &project.config_files {
        base.extend(["-f".to_owned(), file.clone()]);
    }
    let with = |extra: &[&str]| {
        base.iter().cloned().chain(extra.iter().map(|s| (*s).to_owned())).collect::<Vec<_>>()
    };
    if op.spec.name == "compose.status" {
        let argv = with(&["ps", "--all", "--format", "json"]);
        let services = compose_ps(&checked(docker.run(&argv).await?, "docker compose ps")?.stdout)?;
        let mut table = Table::new(&["service", "container", "image", "state", "status", "ports"]);
        for s in &services {
            table.row([
                field(s, "Service").into(),
                field(s, "Name").into(),
                field(s, "Image").into(),
                field(s, "State").into(),
                field(s, "Status").into(),
                field(s, "Publishers").into(),
            ]);
        }
        table.step(&prefixed(&argv));
        table.summary(format!(
            "{}: {} service container(s), {}",
            project.name,
            services.len(),
            project.status
        ));
        return Ok(table.finish());
    }
    let steps: Vec<Vec<String>> = match op.spec.name {
        "compose.update" => vec![with(&["pull"]), with(&["up", "-d"])],
        "compose.restart" => vec![with(&["restart"])],
        "compose.down" => vec![with(&["down"])],
        other => return Err(OpError::NotAvailable(format!("{other} is not implemented by this agent"))),
    };
    let mut table = Table::new(&["step", "result"]);
    for step in &steps {
        table.step(&prefixed(step));
    }
    if op.dry_run {
        let plan: Vec<String> = steps.iter().map(|s| prefixed(s).join(" ")).collect();
        table.summary(format!(
            "would run: {} ({} is {})",
            plan.join("; then "),
            project.name,
            project.status
        ));
        return Ok(table.finish());
    }
    for step in steps {
        let ran = checked(docker.run(&step).await?, &format!("docker {}", step.join(" ")))?;
        let last =
            ran.stderr.lines().chain(ran.stdout.lines()).rev().find(|l| !l.trim().is_empty()).unwrap_or("ok");
        table.row([Cell::from(prefixed(&step).join(" ")), Cell::from(last.trim())]);
    }
    table.summary(format!("{} {}", op.spec.name.trim_start_matches("compose."), project.name));
    Ok(table.finish())
}

/// `docker compose ls --format json`: an array of `{Name, Status, ConfigFiles}`.
fn parse_compose_ls(text: &str) -> Result<Vec<Project>, OpError> {
    let parsed: Value = serde_json::from_str(text.trim())
        .map_err(|e| OpError::Failed(format!("unexpected docker compose ls output: {e}")))?;
    Ok(parsed
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| Project {
            name: field(p, "Name"),
            status: field(p, "Status"),
            config_files: field(p, "ConfigFiles")
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect(),
        })
        .collect())
}

/// `docker compose ps --format json`: a JSON array (Compose < 2.21) or one object per line.
fn compose_ps(text: &str) -> Result<Vec<Value>, OpError> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        let parsed: Value = serde_json::from_str(trimmed)
            .map_err(|e| OpError::Failed(format!("unexpected docker compose ps output: {e}")))?;
        return Ok(parsed.as_array().cloned().unwrap_or_default());
    }
    json_lines(trimmed)
}

/// The docker CLI, located once; every run gets the job's deadline, and an engine that does not
/// answer makes the operation "not available".
struct Docker {
    path: std::path::PathBuf,
    timeout: Duration,
}

impl Docker {
    async fn locate(config: &OpsConfig, timeout: Duration) -> Result<Self, OpError> {
        Ok(Self { path: tool::locate(&config.docker, "docker").await?, timeout })
    }

    async fn run<S: AsRef<str>>(&self, args: &[S]) -> Result<Ran, OpError> {
        let argv: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let ran = tool::run(&self.path, &argv, self.timeout).await?;
        no_daemon(&ran)?;
        Ok(ran)
    }
}

/// `docker inspect` of one container; a name the host does not have is refused.
async fn inspect(docker: &Docker, name: &str) -> Result<Value, OpError> {
    let ran = docker.run(&["inspect", "--type", "container", "--", name]).await?;
    if !ran.success() {
        if ran.stderr.contains("No such") || ran.stdout.trim() == "[]" {
            return Err(OpError::Refused(format!(
                "no container named {name:?} on this host; `container.list` shows the ones it has"
            )));
        }
        return Err(OpError::Failed(format!("docker inspect {name}: {}", ran.complaint())));
    }
    let parsed: Value = serde_json::from_str(&ran.stdout)
        .map_err(|e| OpError::Failed(format!("docker inspect printed something unexpected: {e}")))?;
    parsed
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .ok_or_else(|| OpError::Refused(format!("no container named {name:?} on this host")))
}

/// The fields of `docker inspect` an operator looks at first.
fn summary_fields(c: &Value) -> Vec<(&'static str, String)> {
    let ports = c
        .pointer("/NetworkSettings/Ports")
        .and_then(Value::as_object)
        .map(|ports| {
            let mut list: Vec<String> = ports
                .iter()
                .map(|(port, bindings)| {
                    let published: Vec<String> = bindings
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|b| format!("{}:{}", field(b, "HostIp"), field(b, "HostPort")))
                        .collect();
                    if published.is_empty() {
                        port.clone()
                    } else {
                        format!("{} -> {port}", published.join(","))
                    }
                })
                .collect();
            list.sort();
            list.join(", ")
        })
        .unwrap_or_default();
    let mounts = c
        .pointer("/Mounts")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .map(|m| format!("{} -> {}", field(m, "Source"), field(m, "Destination")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let networks = c
        .pointer("/NetworkSettings/Networks")
        .and_then(Value::as_object)
        .map(|n| n.keys().cloned().collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    vec![
        ("id", pointer(c, "/Id").chars().take(12).collect()),
        ("name", pointer(c, "/Name").trim_start_matches('/').to_owned()),
        ("image", pointer(c, "/Config/Image")),
        ("state", pointer(c, "/State/Status")),
        ("started_at", pointer(c, "/State/StartedAt")),
        ("exit_code", pointer(c, "/State/ExitCode")),
        ("restart_count", pointer(c, "/RestartCount")),
        ("restart_policy", pointer(c, "/HostConfig/RestartPolicy/Name")),
        ("command", pointer(c, "/Config/Cmd")),
        ("ports", ports),
        ("mounts", mounts),
        ("networks", networks),
    ]
}

/// A JSON value at `path` as text ("" when absent).
fn pointer(v: &Value, path: &str) -> String {
    match v.pointer(path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(" "),
        Some(other) => other.to_string(),
    }
}

fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        // Compose's `Publishers`: published ports as objects.
        Some(Value::Array(items)) if items.iter().any(Value::is_object) => items
            .iter()
            .filter(|p| p.get("PublishedPort").and_then(Value::as_u64).is_some_and(|n| n > 0))
            .map(|p| format!("{}:{}->{}", field(p, "URL"), field(p, "PublishedPort"), field(p, "TargetPort")))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// `docker ... --format '{{json .}}'`: one object per line.
fn json_lines(text: &str) -> Result<Vec<Value>, OpError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| OpError::Failed(format!("unexpected docker output {l:?}: {e}")))
        })
        .collect()
}

fn checked(ran: Ran, what: &str) -> Result<Ran, OpError> {
    if ran.success() { Ok(ran) } else { Err(OpError::Failed(format!("{what}: {}", ran.complaint()))) }
}

/// The CLI is installed but no engine answers.
fn no_daemon(ran: &Ran) -> Result<(), OpError> {
    if ran.stderr.contains("Cannot connect to the Docker daemon")
        || ran.stderr.contains("Is the docker daemon running")
    {
        return Err(OpError::NotAvailable("the Docker daemon is not running on this host".into()));
    }
    Ok(())
}

fn prefixed<S: AsRef<str>>(args: &[S]) -> Vec<String> {
    std::iter::once("docker").chain(args.iter().map(AsRef::as_ref)).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from `docker inspect` of an nginx container (Docker 27).
    const INSPECT: &str = r#"[{"Id":"3f0c9a1b2c3d4e5f","Name":"/web","RestartCount":2,
      "State":{"Status":"running","StartedAt":"2026-11-27T01:00:00Z","ExitCode":0},
      "Config":{"Image":"nginx:1.27","Cmd":["nginx","-g","daemon off;"]},
      "HostConfig":{"RestartPolicy":{"Name":"unless-stopped"}},
      "Mounts":[{"Source":"/srv/www","Destination":"/usr/share/nginx/html"}],
      "NetworkSettings":{"Ports":{"80/tcp":[{"HostIp":"0.0.0.0","HostPort":"8080"}],"443/tcp":null},
        "Networks":{"bridge":{}}}}]"#;

    #[test]
    fn inspect_output_is_summarised() {
        let v: Value = serde_json::from_str(INSPECT).expect("json");
        let fields: std::collections::BTreeMap<_, _> = summary_fields(&v[0]).into_iter().collect();
        assert_eq!(fields["name"], "web");
        assert_eq!(fields["restart_count"], "2");
        assert_eq!(fields["ports"], "0.0.0.0:8080 -> 80/tcp, 443/tcp");
        assert_eq!(fields["mounts"], "/srv/www -> /usr/share/nginx/html");
        assert_eq!(fields["command"], "nginx -g daemon off;");
    }
}
