//! The MCP bridge end to end, driven by the official MCP Python SDK (an independent client):
//! a real controller, real agents, the real `tailops-mcp` binary over stdio and Streamable HTTP,
//! and `tailopsctl` as the human who approves.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tailops_proto::v1;
use tailops_tests::mcp_client::McpClient;
use tailops_tests::{TestController, binary, mcp_http_bridge, tailopsctl, text};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const CLIENT: &str = "pytest-assistant";
const CLIENT_VERSION: &str = "1.2.3";

/// A bridge principal with `role` (and `scope`), its profile written to a file.
async fn bridge_profile(
    controller: &TestController,
    dir: &Path,
    name: &str,
    role: &str,
    scope: Option<v1::HostSelector>,
) -> PathBuf {
    let profile = controller.principal("bridge", name, role, scope).await;
    let path = dir.join(format!("{name}.profile.toml"));
    profile.save_new(&path).await.expect("save bridge profile");
    path
}

async fn stdio_bridge(profile: &Path) -> McpClient {
    let args = vec!["--profile".to_owned(), profile.display().to_string()];
    McpClient::stdio(&binary("tailops-mcp").await, &args, &[], CLIENT, CLIENT_VERSION).await
}

fn structured(response: &Value) -> &Value {
    assert_eq!(response["ok"], json!(true), "driver error: {response}");
    let result = &response["result"];
    assert_ne!(result["isError"], json!(true), "tool error: {result}");
    &result["structuredContent"]
}

fn tool_error(response: &Value) -> String {
    assert_eq!(response["ok"], json!(true), "driver error: {response}");
    assert_eq!(response["result"]["isError"], json!(true), "expected a tool error: {response}");
    response["result"]["content"][0]["text"].as_str().unwrap_or_default().to_owned()
}

fn tool<'a>(tools: &'a [Value], name: &str) -> &'a Value {
    tools.iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("no tool {name}"))
}

#[tokio::test]
async fn observe_tools_prompts_and_resources_over_stdio() {
    let controller = TestController::start().await;
    let _web = controller.agent("web1", &[("env", "prod")]).await;
    let dir = tempfile::tempdir().expect("dir");
    let profile = bridge_profile(&controller, dir.path(), "assistant", "mcp", None).await;
    let mut mcp = stdio_bridge(&profile).await;

    let init = mcp.initialized().clone();
    assert_eq!(init["server_info"]["name"], json!("tailops-mcp"), "{init}");
    let instructions = init["instructions"].as_str().unwrap_or_default();
    assert!(instructions.contains("bridge/assistant") && instructions.contains("approv"), "{instructions}");

    // Every tool is listed with a schema that is itself valid JSON Schema.
    let tools = mcp.list_tools().await;
    assert_eq!(
        tools.len(),
        12 + tailops_ops::catalog().count(),
        "{:?}",
        tools.iter().map(|t| &t["name"]).collect::<Vec<_>>()
    );
    assert_eq!(mcp.check_schemas().await, tools.len() as u64);
    // Annotations tell the truth.
    let restart = &tool(&tools, "service_restart")["annotations"];
    assert_eq!(
        (restart["readOnlyHint"].clone(), restart["destructiveHint"].clone()),
        (json!(false), json!(true))
    );
    let status = &tool(&tools, "service_status")["annotations"];
    assert_eq!(
        (status["readOnlyHint"].clone(), status["openWorldHint"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(tool(&tools, "net_ping")["annotations"]["openWorldHint"], json!(true));
    assert_eq!(tool(&tools, "container_pull")["annotations"]["destructiveHint"], json!(false));
    let lines = &tool(&tools, "file_tail")["inputSchema"]["properties"]["lines"];
    assert_eq!(lines["type"], json!("integer"), "{lines}");

    // Observe tools answer from the real controller and agent.
    let hosts = mcp.call_tool("list_hosts", json!({})).await;
    let hosts = structured(&hosts);
    assert_eq!(hosts["count"], json!(1), "{hosts}");
    assert_eq!(hosts["hosts"][0]["name"], json!("web1"));
    assert_eq!(hosts["hosts"][0]["online"], json!(true));
    let detail = mcp.call_tool("get_host", json!({"host": "web1"})).await;
    let detail = structured(&detail);
    assert_eq!(detail["labels"]["env"], json!("prod"), "{detail}");
    let overview = mcp.call_tool("fleet_overview", json!({})).await;
    assert_eq!(structured(&overview)["online"], json!(1));
    let interfaces = mcp.call_tool("net_interfaces", json!({"host": "web1"})).await;
    let interfaces = structured(&interfaces);
    assert_eq!(interfaces["state"], json!("succeeded"), "{interfaces}");
    let records = interfaces["hosts"][0]["output"]["records"].as_array().expect("records");
    assert!(!records.is_empty(), "{interfaces}");
    for record in records {
        let name = record["interface"].as_str().expect("interface name");
        assert!(Path::new("/sys/class/net").join(name).exists(), "{name} is not an interface here");
    }
    let top = mcp.call_tool_with("top_processes", json!({"host": "web1", "limit": 3}), true, None).await;
    let processes = &structured(&top)["hosts"][0]["processes"];
    assert!(processes["total"].as_u64().unwrap_or(0) > 0, "{processes}");
    assert!(processes["top"].as_array().is_some_and(|p| !p.is_empty() && p.len() <= 3), "{processes}");
    let progress = top["progress"].as_array().expect("progress notifications");
    assert!(progress.iter().any(|p| p["progress"] == p["total"] && p["total"] == json!(1.0)), "{progress:?}");

    // A network check's own target and timeout do not collide with the job's host and deadline.
    let port_schema = &tool(&tools, "net_port")["inputSchema"]["properties"];
    assert!(port_schema["target"].is_object() && port_schema["check_timeout"].is_object(), "{port_schema}");
    let port = controller.url.rsplit(':').next().expect("port").trim_end_matches('/').to_owned();
    let check = mcp
        .call_tool(
            "net_port",
            json!({"host": "web1", "target": "127.0.0.1", "port": port.parse::<u16>().expect("port"),
                   "check_timeout": "2s", "timeout": "20s"}),
        )
        .await;
    let check = structured(&check);
    assert_eq!(check["state"], json!("succeeded"), "{check}");
    assert_eq!(check["hosts"].as_array().map(Vec::len), Some(1), "{check}");

    // Bad input is a clear tool error, and nothing runs.
    let error = tool_error(&mcp.call_tool("service_list", json!({"host": "web1", "bogus": 1})).await);
    assert!(error.contains("unknown argument \"bogus\""), "{error}");
    let error = tool_error(&mcp.call_tool("file_tail", json!({"host": "web1", "path": "relative"})).await);
    assert!(error.contains("path"), "{error}");
    let error = tool_error(&mcp.call_tool("exec", json!({"argv": ["true"]})).await);
    assert!(error.contains("say which hosts"), "{error}");
    let error = tool_error(&mcp.call_tool("get_host", json!({"host": "nope"})).await);
    assert!(error.contains("the controller refused"), "{error}");

    // Prompts and resources.
    let prompts = mcp.request(json!({"op": "list_prompts"})).await;
    let names: Vec<&str> =
        prompts["prompts"].as_array().expect("prompts").iter().filter_map(|p| p["name"].as_str()).collect();
    for expected in [
        "health_check",
        "security_audit",
        "troubleshoot_host",
        "troubleshoot_container",
        "investigate_high_usage",
        "plan_fleet_update",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let prompt = mcp
        .request(json!({"op": "get_prompt", "name": "troubleshoot_host", "arguments": {"host": "web1"}}))
        .await;
    assert!(
        prompt["messages"][0]["content"]["text"].as_str().unwrap_or_default().contains("web1"),
        "{prompt}"
    );
    let resources = mcp.request(json!({"op": "list_resources"})).await;
    assert_eq!(resources["resources"][0]["uri"], json!("tailops://hosts/web1"), "{resources}");
    let templates = mcp.request(json!({"op": "list_resource_templates"})).await;
    assert_eq!(
        templates["resourceTemplates"][0]["uriTemplate"],
        json!("tailops://hosts/{name}"),
        "{templates}"
    );
    let resource = mcp.request(json!({"op": "read_resource", "uri": "tailops://hosts/web1"})).await;
    let document: Value =
        serde_json::from_str(resource["contents"][0]["text"].as_str().expect("text")).expect("host JSON");
    assert_eq!(document["name"], json!("web1"));
    let missing = mcp.request(json!({"op": "read_resource", "uri": "tailops://hosts/nope"})).await;
    assert_eq!(missing["ok"], json!(false), "{missing}");
}

#[tokio::test]
async fn exec_waits_for_a_human_and_the_assistant_then_gets_the_output() {
    let controller = TestController::start().await;
    let _web = controller.agent("web1", &[]).await;
    let dir = tempfile::tempdir().expect("dir");
    let profile = bridge_profile(&controller, dir.path(), "assistant", "mcp", None).await;
    let mut mcp = stdio_bridge(&profile).await;

    let started = tokio::time::Instant::now();
    let response = mcp
        .call_tool(
            "exec",
            json!({"host": "web1", "argv": ["echo", "hello from mcp"], "reason": "smoke test"}),
        )
        .await;
    let pending = structured(&response).clone();
    assert_eq!(pending["state"], json!("pending_approval"), "{pending}");
    assert!(started.elapsed() < Duration::from_secs(20), "a pending job must return at once");
    let job_id = pending["job_id"].as_u64().expect("job id");
    let approve = pending["approve_command"].as_str().expect("approve command");
    assert_eq!(approve, format!("tailopsctl approvals approve {job_id}"));

    // Before approval, waiting returns the state and the approval command again.
    let waiting = mcp.call_tool("wait_job", json!({"job_id": job_id, "timeout": "1s"})).await;
    assert_eq!(structured(&waiting)["state"], json!("pending_approval"));

    // The human sees who asked, through which client, and approves.
    let admin = controller.admin_profile_file().await;
    let listed = tailopsctl(&admin, &["approvals", "ls"]).await;
    let listing = text(&listed.stdout);
    assert!(listing.contains("bridge/assistant"), "{listing}");
    assert!(listing.contains(&format!("{CLIENT}/{CLIENT_VERSION}")), "{listing}");
    let approved = tailopsctl(&admin, &["approvals", "approve", &job_id.to_string()]).await;
    assert!(approved.status.success(), "{}", text(&approved.stderr));

    let done = mcp.call_tool_with("wait_job", json!({"job_id": job_id, "timeout": "60s"}), true, None).await;
    let result = structured(&done);
    assert_eq!(result["state"], json!("succeeded"), "{result}");
    assert_eq!(result["hosts"][0]["stdout"], json!("hello from mcp\n"));
    assert_eq!(result["hosts"][0]["exit_code"], json!(0));

    // The audit log names the bridge and the client behind it for what it did.
    let entries = controller
        .audit()
        .await
        .list_audit(v1::ListAuditRequest { limit: 200, ..Default::default() })
        .await
        .expect("audit")
        .into_inner()
        .entries;
    let created = entries
        .iter()
        .find(|e| e.principal.ends_with("/bridge/assistant") && e.action.starts_with("job."))
        .expect("the bridge's job is audited");
    assert_eq!(created.client, format!("{CLIENT}/{CLIENT_VERSION}"), "{created:?}");

    // The bridge's own audit view shows its entries and no one else's.
    let audit = mcp.call_tool("recent_audit", json!({"limit": 50})).await;
    let audit = structured(&audit);
    let principals: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["principal"].as_str())
        .collect();
    assert!(
        !principals.is_empty() && principals.iter().all(|p| p.ends_with("/bridge/assistant")),
        "{principals:?}"
    );
}

#[tokio::test]
async fn a_cancelled_call_cancels_its_job_on_the_host() {
    let controller = TestController::start().await;
    let _web = controller.agent("web1", &[]).await;
    let dir = tempfile::tempdir().expect("dir");
    // An operator bridge runs exec outright, so the call follows the job.
    let profile = bridge_profile(&controller, dir.path(), "runner", "operator", None).await;
    let mut mcp = stdio_bridge(&profile).await;

    let response = mcp
        .call_tool_with(
            "exec",
            json!({"host": "web1", "argv": ["sleep", "30"], "timeout": "60s"}),
            true,
            Some(1500),
        )
        .await;
    assert_eq!(response["cancelled"], json!(true), "{response}");

    let mut fleet = controller.fleet().await;
    let jobs = fleet.list_jobs(v1::ListJobsRequest { limit: 5 }).await.expect("jobs").into_inner().jobs;
    let job = jobs.first().expect("the exec job");
    let mut state = job.state();
    for _ in 0..100 {
        if state != v1::JobState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let request = v1::GetJobRequest { job_id: job.id };
        state = fleet.get_job(request).await.expect("job").into_inner().job.expect("job").state();
    }
    assert_eq!(state, v1::JobState::Cancelled);
}

#[tokio::test]
async fn a_bridge_may_withdraw_its_own_job_but_not_anothers() {
    let controller = TestController::start().await;
    let _web = controller.agent("web1", &[]).await;
    let dir = tempfile::tempdir().expect("dir");
    let mine = bridge_profile(&controller, dir.path(), "asker", "mcp", None).await;
    let other = bridge_profile(&controller, dir.path(), "bystander", "mcp", None).await;
    let mut asker = stdio_bridge(&mine).await;
    let mut bystander = stdio_bridge(&other).await;

    let pending = asker.call_tool("exec", json!({"host": "web1", "argv": ["touch", "/tmp/never"]})).await;
    let job_id = structured(&pending)["job_id"].as_u64().expect("job id");
    // Another bridge's job is invisible to it (its argv may hold secrets): not found.
    let error = tool_error(&bystander.call_tool("cancel_job", json!({"job_id": job_id})).await);
    assert!(error.contains(&format!("job {job_id} not found")), "{error}");
    let cancelled = asker.call_tool("cancel_job", json!({"job_id": job_id})).await;
    assert_eq!(structured(&cancelled)["already_finished"], json!(false), "{cancelled}");
    let job = asker.call_tool("get_job", json!({"job_id": job_id})).await;
    let job = structured(&job);
    assert_eq!(job["state"], json!("cancelled"), "{job}");
    assert_eq!(job["requested_via"], json!(format!("{CLIENT}/{CLIENT_VERSION}")), "{job}");
}

#[tokio::test]
async fn a_scoped_bridge_cannot_reach_other_hosts() {
    let controller = TestController::start().await;
    let _web = controller.agent("web1", &[("env", "prod")]).await;
    let _db = controller.agent("db1", &[("env", "dev")]).await;
    let dir = tempfile::tempdir().expect("dir");
    let scope =
        v1::HostSelector { labels: [("env".to_owned(), "prod".to_owned())].into(), ..Default::default() };
    let profile = bridge_profile(&controller, dir.path(), "narrow", "mcp", Some(scope)).await;
    let mut mcp = stdio_bridge(&profile).await;

    let hosts = mcp.call_tool("list_hosts", json!({})).await;
    let names: Vec<&str> = structured(&hosts)["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert_eq!(names, ["web1"]);
    let error = tool_error(&mcp.call_tool("get_host", json!({"host": "db1"})).await);
    assert!(error.contains("the controller refused"), "{error}");
    let resource = mcp.request(json!({"op": "read_resource", "uri": "tailops://hosts/db1"})).await;
    assert_eq!(resource["ok"], json!(false), "{resource}");
    // A job aimed at the other host reaches nothing.
    let ran = mcp.call_tool("net_interfaces", json!({"host": "db1"})).await;
    if ran["result"]["isError"] != json!(true) {
        let result = structured(&ran);
        assert!(result["hosts"].as_array().is_none_or(|h| h.iter().all(|h| h["host"] != "db1")), "{result}");
    }
    let mut fleet = controller.fleet().await;
    let jobs = fleet.list_jobs(v1::ListJobsRequest { limit: 10 }).await.expect("jobs").into_inner().jobs;
    for job in jobs {
        let detail = fleet.get_job(v1::GetJobRequest { job_id: job.id }).await.expect("job").into_inner();
        assert!(
            detail.targets.iter().all(|t| t.target.as_ref().is_none_or(|t| t.host_name != "db1")),
            "the scoped bridge reached db1: {detail:?}"
        );
    }
}

/// The status code of a raw `initialize` POST with `headers`.
async fn raw_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    let address = url.trim_start_matches("http://").split('/').next().expect("address").to_owned();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
    .to_string();
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n\
         content-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("host: {address}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.expect("status line");
    String::from_utf8_lossy(&head[9..12]).parse().expect("status code")
}

#[tokio::test]
async fn streamable_http_with_token_host_and_origin_guards() {
    let controller = TestController::start().await;
    let _web = controller.agent("web1", &[]).await;
    let dir = tempfile::tempdir().expect("dir");
    let profile = bridge_profile(&controller, dir.path(), "remote", "mcp", None).await;
    let (_bridge, url) = mcp_http_bridge(&profile, &["--token", "s3cret-token-of-32-characters-xx"]).await;

    // The official client, with the token, works end to end.
    let mut mcp = McpClient::http(
        &url,
        &[("Authorization", "Bearer s3cret-token-of-32-characters-xx")],
        CLIENT,
        CLIENT_VERSION,
    )
    .await
    .expect("connect over HTTP");
    let hosts = mcp.call_tool("list_hosts", json!({})).await;
    assert_eq!(structured(&hosts)["hosts"][0]["name"], json!("web1"));
    assert!(mcp.list_tools().await.len() > 12);

    // Without the token, or with another, nothing is served.
    let refused = McpClient::http(&url, &[], CLIENT, CLIENT_VERSION).await;
    assert!(refused.is_err(), "a client without the token got in");
    assert_eq!(raw_status(&url, &[]).await, 401);
    assert_eq!(raw_status(&url, &[("authorization", "Bearer wrong")]).await, 401);
    let auth = ("authorization", "Bearer s3cret-token-of-32-characters-xx");
    assert_eq!(raw_status(&url, &[auth]).await, 200);
    // DNS rebinding: a foreign Host, or a browser page from another origin, is refused.
    assert_eq!(raw_status(&url, &[auth, ("host", "evil.example:80")]).await, 403);
    assert_eq!(raw_status(&url, &[auth, ("origin", "http://evil.example")]).await, 403);
}

#[tokio::test]
async fn http_off_loopback_needs_a_token_and_bad_profiles_are_explained() {
    let controller = TestController::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let profile = bridge_profile(&controller, dir.path(), "remote", "mcp", None).await;
    let run = |args: Vec<String>| async move {
        tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(binary("tailops-mcp").await)
                .args(args)
                .env_remove("TAILOPS_MCP_TOKEN")
                .output(),
        )
        .await
        .expect("tailops-mcp exits")
        .expect("run tailops-mcp")
    };
    let listen = |extra: &[&str]| {
        let mut args = vec!["--profile".to_owned(), profile.display().to_string()];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    };
    let open = run(listen(&["--listen", "0.0.0.0:0"])).await;
    assert!(!open.status.success());
    assert!(text(&open.stderr).contains("not a loopback address"), "{}", text(&open.stderr));
    // Behind `tailscale serve` the connection is loopback, but the callers are not.
    let proxied = run(listen(&["--listen", "127.0.0.1:0", "--allow-host", "box.tailnet.ts.net"])).await;
    assert!(!proxied.status.success());
    assert!(text(&proxied.stderr).contains("set a bearer token"), "{}", text(&proxied.stderr));
    let weak = run(listen(&["--listen", "127.0.0.1:0", "--token", "short"])).await;
    assert!(!weak.status.success());
    assert!(text(&weak.stderr).contains("shorter than 16"), "{}", text(&weak.stderr));

    let missing = run(vec!["--profile".into(), dir.path().join("none.toml").display().to_string()]).await;
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("no profile found"), "{}", text(&missing.stderr));

    // A disabled bridge is refused at start, with what to check.
    let admin = controller.admin_profile_file().await;
    let disabled = tailopsctl(&admin, &["bridges", "disable", "remote"]).await;
    assert!(disabled.status.success(), "{}", text(&disabled.stderr));
    let refused = run(vec!["--profile".into(), profile.display().to_string()]).await;
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("refused the bridge's profile"), "{}", text(&refused.stderr));
}

/// The README's first command: `tailops-controller dev` prints how to connect an assistant, and
/// that line works.
#[tokio::test]
async fn the_dev_controller_offers_an_assistant_bridge() {
    let dir = tempfile::tempdir().expect("dir");
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("free port");
    let port = free.local_addr().expect("addr").port();
    drop(free);
    let mut dev = tokio::process::Command::new(binary("tailops-controller").await)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the dev controller");
    let mut lines = BufReader::new(dev.stdout.take().expect("stdout")).lines();
    let mut bridge_line = None;
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.trim_start().contains("tailops-mcp --profile ") {
                bridge_line = Some(line.trim().to_owned());
            }
            if line.starts_with("Stop with Ctrl-C") {
                return;
            }
        }
        panic!("the dev controller exited early");
    })
    .await
    .expect("the dev controller did not come up");
    let line = bridge_line.expect("an MCP line in the dev banner");
    let mut words = line.split_whitespace();
    let program = PathBuf::from(words.next().expect("program"));
    let args: Vec<String> = words.map(str::to_owned).collect();
    let mut mcp = McpClient::stdio(&program, &args, &[], CLIENT, CLIENT_VERSION).await;
    let hosts = mcp.call_tool("list_hosts", json!({})).await;
    let hosts = structured(&hosts);
    assert_eq!(hosts["count"], json!(1), "{hosts}");
    assert_eq!(hosts["hosts"][0]["online"], json!(true), "{hosts}");
    drop(mcp);

    // Ctrl-C stops the controller and its local agent.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(dev.id().expect("pid")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("interrupt");
    let status =
        tokio::time::timeout(Duration::from_secs(30), dev.wait()).await.expect("dev stops").expect("wait");
    assert!(status.success(), "{status}");
}
