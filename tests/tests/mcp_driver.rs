//! The MCP test client (`tailops_tests::mcp_client`, the official Python SDK behind
//! `tests/mcp/driver.py`) against a reference server on the same SDK (`tests/mcp/echo_server.py`),
//! over stdio and Streamable HTTP. This keeps the client honest independently of tailops-mcp.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tailops_tests::mcp_client::{MCP_DIR, McpClient, echo_server, python};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn tool_names(tools: &[Value]) -> Vec<&str> {
    tools.iter().filter_map(|t| t["name"].as_str()).collect()
}

/// The structured result of a successful, non-error tool call.
fn structured(answer: &Value) -> &Value {
    assert_eq!(answer["ok"], json!(true), "{answer}");
    assert_eq!(answer["result"]["isError"], json!(false), "{answer}");
    &answer["result"]["structuredContent"]
}

/// Waits until the server has seen `n` cancelled calls: its handler notices the cancellation
/// asynchronously, so the count may trail the cancel notification for a moment.
async fn expect_cancelled_calls(client: &mut McpClient, n: u64) {
    for _ in 0..100 {
        let stats = client.call_tool("stats", json!({})).await;
        if structured(&stats)["cancelled_calls"] == json!(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server never saw {n} cancelled call(s)");
}

/// Everything a session can do, over whichever transport `client` uses.
async fn exercise(client: &mut McpClient, client_name: &str, client_version: &str) {
    let init = client.initialized().clone();
    assert_eq!(init["server_info"]["name"], json!("tailops-echo"), "{init}");
    assert_eq!(init["server_info"]["version"], json!("1.2.3"), "{init}");
    assert!(init["protocol_version"].as_str().is_some_and(|v| !v.is_empty()), "{init}");
    assert!(init["capabilities"]["tools"].is_object(), "{init}");
    assert!(init["instructions"].as_str().is_some_and(|i| i.contains("self-test")), "{init}");

    let tools = client.list_tools().await;
    let names = tool_names(&tools);
    for name in ["echo", "count", "wait_for_cancel", "stats", "whoami", "fail"] {
        assert!(names.contains(&name), "no {name} in {names:?}");
    }
    let echo = tools.iter().find(|t| t["name"] == json!("echo")).expect("echo");
    assert_eq!(echo["title"], json!("Echo"));
    assert_eq!(echo["annotations"]["readOnlyHint"], json!(true));
    assert_eq!(echo["inputSchema"]["type"], json!("object"));
    assert_eq!(echo["inputSchema"]["required"], json!(["text"]));
    // Every tool here has an input and an output schema.
    assert_eq!(client.check_schemas().await, 2 * tools.len() as u64);

    let whoami = client.call_tool("whoami", json!({})).await;
    assert_eq!(structured(&whoami), &json!({"name": client_name, "version": client_version}));

    let echoed = client.call_tool("echo", json!({"text": "hi there"})).await;
    assert_eq!(structured(&echoed), &json!({"result": "hi there"}));
    assert_eq!(echoed["result"]["content"][0], json!({"type": "text", "text": "hi there"}), "{echoed}");
    assert_eq!(echoed["progress"], json!([]), "no progress asked for: {echoed}");

    let counted = client.call_tool_with("count", json!({"steps": 3}), true, None).await;
    assert_eq!(structured(&counted), &json!({"steps": 3, "text": "counted to 3"}));
    assert_eq!(
        counted["progress"],
        json!([
            {"progress": 1.0, "total": 3.0, "message": "step 1"},
            {"progress": 2.0, "total": 3.0, "message": "step 2"},
            {"progress": 3.0, "total": 3.0, "message": "step 3"},
        ]),
        "{counted}"
    );

    let cancelled = client.call_tool_with("wait_for_cancel", json!({}), true, Some(1500)).await;
    assert_eq!(cancelled["ok"], json!(true), "{cancelled}");
    assert_eq!(cancelled["cancelled"], json!(true), "{cancelled}");
    assert_eq!(
        cancelled["progress"],
        json!([{"progress": 0.0, "total": null, "message": "waiting"}]),
        "{cancelled}"
    );
    // The server got notifications/cancelled and stopped the call; the session goes on.
    expect_cancelled_calls(client, 1).await;

    // A call that finishes before its cancel deadline is just a call.
    let quick = client.call_tool_with("echo", json!({"text": "fast"}), false, Some(60_000)).await;
    assert_eq!(structured(&quick), &json!({"result": "fast"}));

    let failed = client.call_tool("fail", json!({"message": "boom"})).await;
    assert_eq!(failed["ok"], json!(true), "a tool error is a result: {failed}");
    assert_eq!(failed["result"]["isError"], json!(true), "{failed}");

    let prompts = client.request(json!({"op": "list_prompts"})).await;
    assert_eq!(prompts["prompts"][0]["name"], json!("greet"), "{prompts}");
    let prompt =
        client.request(json!({"op": "get_prompt", "name": "greet", "arguments": {"name": "Ada"}})).await;
    assert_eq!(prompt["ok"], json!(true), "{prompt}");
    assert_eq!(prompt["messages"][0]["content"]["text"], json!("Hello, Ada!"), "{prompt}");

    let resources = client.request(json!({"op": "list_resources"})).await;
    assert_eq!(resources["resources"][0]["uri"], json!("echo://static/readme"), "{resources}");
    let templates = client.request(json!({"op": "list_resource_templates"})).await;
    assert_eq!(templates["resourceTemplates"][0]["uriTemplate"], json!("echo://{word}"), "{templates}");
    let read = client.request(json!({"op": "read_resource", "uri": "echo://hello"})).await;
    assert_eq!(read["ok"], json!(true), "{read}");
    assert_eq!(read["contents"][0]["text"], json!("echo: hello"), "{read}");
    // Only what the server sent: no SDK defaults for later protocol revisions.
    assert!(read.get("resultType").is_none() && read.get("ttlMs").is_none(), "{read}");

    // A JSON-RPC error comes back with its code.
    let missing = client.request(json!({"op": "read_resource", "uri": "nope://x"})).await;
    assert_eq!(missing["ok"], json!(false), "{missing}");
    assert_eq!(missing["code"], json!(-32602), "{missing}");
    assert!(missing["error"].as_str().is_some_and(|e| e.contains("nope://x")), "{missing}");

    // Bad commands are answered, not fatal.
    let unknown = client.request(json!({"op": "frobnicate"})).await;
    assert_eq!(unknown, json!({"ok": false, "error": "unknown op"}));
    let nameless = client.request(json!({"op": "call_tool"})).await;
    assert_eq!(nameless["ok"], json!(false), "{nameless}");
    let pong = client.request(json!({"op": "ping"})).await;
    assert_eq!(pong, json!({"ok": true}));
}

#[tokio::test]
async fn stdio_session_against_the_reference_server() {
    let python = python().await;
    let server = echo_server().display().to_string();
    let envs = [("TAILOPS_ECHO_MARK".to_string(), "from the test".to_string())];
    let mut client =
        McpClient::stdio(&python, &[server, "stdio".into()], &envs, "driver-test", "4.5.6").await;

    exercise(&mut client, "driver-test", "4.5.6").await;

    let env = client.call_tool("env", json!({"name": "TAILOPS_ECHO_MARK"})).await;
    assert_eq!(structured(&env), &json!({"value": "from the test"}), "envs reach the server");

    let status = client.close().await;
    assert!(status.success(), "driver exited with {status}");
}

#[tokio::test]
async fn stdio_default_client_info_and_a_server_that_cannot_start() {
    let python = python().await;
    let server = echo_server().display().to_string();
    let mut client =
        McpClient::stdio(&python, &[server, "stdio".into()], &[], "tailops-tests", "0.0.0").await;
    let whoami = client.call_tool("whoami", json!({})).await;
    assert_eq!(structured(&whoami), &json!({"name": "tailops-tests", "version": "0.0.0"}));
    drop(client);

    // A server that exits at once fails the initialize; stdio() panics, saying so.
    let refused = tokio::spawn(async move {
        McpClient::stdio(&python, &["-c".into(), "pass".into()], &[], "x", "0").await;
    })
    .await
    .expect_err("initialize against a server that exits must fail");
    let message = refused.into_panic();
    let message = message
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| message.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    assert!(message.contains("could not initialize"), "{message}");
}

#[tokio::test]
async fn pages_and_a_bad_schema_from_a_hand_written_server() {
    let python = python().await;
    let server = Path::new(MCP_DIR).join("paged_server.py").display().to_string();
    let mut client = McpClient::stdio(&python, &[server], &[], "tailops-tests", "0.0.0").await;
    assert_eq!(client.initialized()["server_info"]["name"], json!("paged"));
    assert_eq!(client.initialized()["instructions"], Value::Null);

    // Both pages, in order.
    assert_eq!(tool_names(&client.list_tools().await), ["first", "second"]);
    let check = client.request(json!({"op": "check_schemas"})).await;
    assert_eq!(check["ok"], json!(false), "{check}");
    let error = check["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("tool second: inputSchema: "), "{check}");

    let prompts = client.request(json!({"op": "list_prompts"})).await;
    assert_eq!(prompts["ok"], json!(false), "{prompts}");
    assert_eq!(prompts["code"], json!(-32601), "{prompts}");
    assert!(client.close().await.success());
}

/// The reference server over Streamable HTTP on a port of its choosing; it prints its URL.
async fn echo_http(required_header: &str) -> (Child, String) {
    let mut child = Command::new(python().await)
        .arg(echo_server())
        .args(["http", "--require-header", required_header])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start echo_server.py http");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("echo server announces its URL in time")
        .expect("read echo server stdout")
        .expect("echo server printed its URL");
    let announced: Value = serde_json::from_str(&line).expect("a JSON line");
    let url = announced["url"].as_str().expect("url").to_string();
    (child, url)
}

#[tokio::test]
async fn http_session_against_the_reference_server() {
    let (mut server, url) = echo_http("Authorization: Bearer s3cret").await;

    // Without the header the server refuses, and http() says how.
    let refused = McpClient::http(&url, &[], "driver-test", "1.0").await.expect_err("refused");
    let refused: Value = serde_json::from_str(&refused).expect("the driver's JSON error line");
    assert_eq!(refused["ok"], json!(false), "{refused}");
    assert_eq!(refused["http_status"], json!(401), "{refused}");
    let wrong = McpClient::http(&url, &[("Authorization", "Bearer nope")], "driver-test", "1.0").await;
    assert!(wrong.is_err_and(|line| line.contains("401")));

    let mut client = McpClient::http(&url, &[("Authorization", "Bearer s3cret")], "driver-http", "2.0")
        .await
        .expect("initialized with the header");
    exercise(&mut client, "driver-http", "2.0").await;
    let status = client.close().await;
    assert!(status.success(), "driver exited with {status}");

    // Nothing listens any more: the connection itself is refused.
    server.kill().await.expect("stop the echo server");
    let gone = McpClient::http(&url, &[], "driver-test", "1.0").await.expect_err("no server");
    assert!(gone.contains("initialize failed"), "{gone}");
}
