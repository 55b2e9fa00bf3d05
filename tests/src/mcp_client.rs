//! A real MCP client for the end-to-end tests: the official MCP Python SDK, pinned in
//! `tests/mcp/requirements.txt`, driven through `tests/mcp/driver.py`. Nothing here speaks MCP
//! itself, so what a test sees is what an independently written client sees.
//!
//! The driver initializes, answers with one JSON line, then takes one JSON command per line on
//! its stdin and answers each with exactly one JSON line (`{"ok": true, ...}` or
//! `{"ok": false, "error": ..., "code"?: ...}`); `driver.py`'s docstring lists the commands.
//! The venv is built on first use by `tests/mcp/setup-venv.sh`, once per process.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

/// `tests/mcp`: the driver, its requirements and the reference server.
pub const MCP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/mcp");

/// How long the driver may take to answer one command (or to initialize).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long building the venv may take (pip downloads and installs the SDK the first time).
const SETUP_TIMEOUT: Duration = Duration::from_secs(600);

/// Lines of the driver's stderr (which carries a stdio server's stderr too) kept for panics.
const STDERR_TAIL_LINES: usize = 80;

static PYTHON: OnceCell<PathBuf> = OnceCell::const_new();

/// `tests/mcp/echo_server.py`, a tiny MCP server on the same SDK (`stdio` or `http`), used to
/// test the driver itself.
pub fn echo_server() -> PathBuf {
    Path::new(MCP_DIR).join("echo_server.py")
}

/// The venv's python, with the MCP SDK installed. Runs `tests/mcp/setup-venv.sh` once per
/// process (the script itself is idempotent and locks against other processes). Panics with the
/// script's stderr if the setup fails.
pub async fn python() -> PathBuf {
    PYTHON
        .get_or_init(|| async {
            let script = Path::new(MCP_DIR).join("setup-venv.sh");
            let output = Command::new("bash")
                .arg(&script)
                .arg("--print-python")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output();
            let output = tokio::time::timeout(SETUP_TIMEOUT, output)
                .await
                .unwrap_or_else(|_| panic!("{} did not finish within {SETUP_TIMEOUT:?}", script.display()))
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            if !output.status.success() {
                panic!(
                    "{} failed ({}); the MCP tests need python3 with venv and pip, and PyPI:\n{}",
                    script.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            assert!(
                path.is_absolute(),
                "{} printed no python path: {:?}",
                script.display(),
                String::from_utf8_lossy(&output.stdout)
            );
            path
        })
        .await
        .clone()
}

/// A running `driver.py`, connected and initialized. Dropping it kills the driver; a stdio
/// server then sees its stdin close, which is an MCP server's cue to exit.
#[derive(Debug)]
pub struct McpClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_task: JoinHandle<()>,
    initialized: Value,
    target: String,
}

impl McpClient {
    /// Spawns `cmd args...` as an MCP server over stdio and initializes it with the given
    /// clientInfo. The server gets the test's environment plus `envs` (they are set on the
    /// driver, which passes its whole environment on); its stderr goes to the test's stderr.
    /// Panics if the server cannot be started or initialized.
    pub async fn stdio(
        cmd: &Path,
        args: &[String],
        envs: &[(String, String)],
        client_name: &str,
        client_version: &str,
    ) -> McpClient {
        let mut argv: Vec<OsString> = vec!["stdio".into()];
        argv.extend(client_args(client_name, client_version));
        argv.push("--".into());
        argv.push(cmd.into());
        argv.extend(args.iter().map(OsString::from));
        let target = format!("stdio {}", cmd.display());
        match Self::spawn(argv, envs, target.clone()).await {
            Ok(client) => client,
            Err((line, tail)) => {
                panic!("MCP driver could not initialize {target}: {line}\ndriver stderr:\n{tail}")
            }
        }
    }

    /// Connects to a Streamable HTTP endpoint, sending `headers` on every request, and
    /// initializes with the given clientInfo. `Err` carries the driver's JSON error line when
    /// the connection or the initialize handshake is refused (its `error` text, and `code` or
    /// `http_status` where there is one), so that a test can assert a refusal.
    pub async fn http(
        url: &str,
        headers: &[(&str, &str)],
        client_name: &str,
        client_version: &str,
    ) -> Result<McpClient, String> {
        let mut argv: Vec<OsString> = vec!["http".into(), url.into()];
        for (name, value) in headers {
            argv.push("--header".into());
            argv.push(format!("{name}: {value}").into());
        }
        argv.extend(client_args(client_name, client_version));
        Self::spawn(argv, &[], format!("http {url}")).await.map_err(|(line, _)| line)
    }

    /// Starts the driver and reads its initialize line: `Err((line, stderr tail))` if it
    /// reported a failure. Panics if it said nothing intelligible.
    async fn spawn(
        argv: Vec<OsString>,
        envs: &[(String, String)],
        target: String,
    ) -> Result<McpClient, (String, String)> {
        let python = python().await;
        let driver = Path::new(MCP_DIR).join("driver.py");
        let mut child = Command::new(&python)
            .arg(&driver)
            .args(&argv)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {}: {e}", python.display(), driver.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let stderr = child.stderr.take().expect("piped stderr");

        // Pass the driver's (and a stdio server's) stderr through, keeping a tail for panics.
        let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
        let tail = Arc::clone(&stderr_tail);
        let stderr_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[mcp] {line}");
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });

        let mut client = McpClient {
            child,
            stdin: Some(stdin),
            stdout,
            stderr_tail,
            stderr_task,
            initialized: Value::Null,
            target,
        };
        let first = client.read_line("initialize").await;
        if first["ok"] == json!(true) && first["initialized"].is_object() {
            client.initialized = first["initialized"].clone();
            Ok(client)
        } else if first["ok"] == json!(false) {
            // The driver exits after reporting; let its stderr drain into the tail.
            let tail = client.stderr_tail(true).await;
            Err((first.to_string(), tail))
        } else {
            let tail = client.stderr_tail(true).await;
            panic!(
                "MCP driver for {} answered initialize with {first}\ndriver stderr:\n{tail}",
                client.target
            )
        }
    }

    /// What the server said at initialize: `{"server_info": {...}, "protocol_version": "...",
    /// "capabilities": {...}, "instructions": ...}`.
    pub fn initialized(&self) -> &Value {
        &self.initialized
    }

    /// Sends one command (an object with an `op`, see `driver.py`) and returns the driver's
    /// answer, whether `ok` or not. Panics if the driver does not answer within
    /// [`REQUEST_TIMEOUT`] or has gone, naming the command and showing the driver's stderr.
    pub async fn request(&mut self, command: Value) -> Value {
        let mut line = command.to_string();
        line.push('\n');
        let written = match self.stdin.as_mut() {
            Some(stdin) => match stdin.write_all(line.as_bytes()).await {
                Ok(()) => stdin.flush().await,
                Err(e) => Err(e),
            },
            None => unreachable!("stdin is only taken by close()"),
        };
        if let Err(e) = written {
            let tail = self.stderr_tail(true).await;
            panic!("MCP driver for {} did not take {command}: {e}\ndriver stderr:\n{tail}", self.target);
        }
        self.read_line(&command.to_string()).await
    }

    async fn read_line(&mut self, what: &str) -> Value {
        let line = match tokio::time::timeout(REQUEST_TIMEOUT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let tail = self.stderr_tail(true).await;
                panic!(
                    "MCP driver for {} exited without answering {what}\ndriver stderr:\n{tail}",
                    self.target
                )
            }
            Ok(Err(e)) => {
                let tail = self.stderr_tail(true).await;
                panic!(
                    "reading the MCP driver for {} failed at {what}: {e}\ndriver stderr:\n{tail}",
                    self.target
                )
            }
            Err(_) => {
                let tail = self.stderr_tail(false).await;
                panic!(
                    "MCP driver for {} did not answer {what} within {REQUEST_TIMEOUT:?}\n\
                     driver stderr:\n{tail}",
                    self.target
                )
            }
        };
        serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("MCP driver for {} answered {what} with a non-JSON line ({e}): {line}", self.target)
        })
    }

    /// The last lines of the driver's stderr; with `settle`, first gives the driver a moment to
    /// exit and its stderr to drain (when it is known to be going).
    async fn stderr_tail(&mut self, settle: bool) -> String {
        if settle {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
            if !self.stderr_task.is_finished() {
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.stderr_task).await;
            }
        }
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }

    /// All the server's tools (every page), as the wire has them (`name`, `inputSchema`, ...).
    /// Panics if listing fails.
    pub async fn list_tools(&mut self) -> Vec<Value> {
        let answer = self.request(json!({"op": "list_tools"})).await;
        match answer["tools"].as_array() {
            Some(tools) if answer["ok"] == json!(true) => tools.clone(),
            _ => panic!("tools/list on {} failed: {answer}", self.target),
        }
    }

    /// Checks every tool's inputSchema and outputSchema against its JSON Schema meta-schema and
    /// returns how many schemas were checked. Panics naming the first bad one.
    pub async fn check_schemas(&mut self) -> u64 {
        let answer = self.request(json!({"op": "check_schemas"})).await;
        match answer["checked"].as_u64() {
            Some(checked) if answer["ok"] == json!(true) => checked,
            _ => panic!("schema check on {} failed: {answer}", self.target),
        }
    }

    /// Calls a tool. The answer is `{"ok": true, "result": {"isError", "content",
    /// "structuredContent"}, "progress": []}` or `{"ok": false, "error", "code"?}`.
    pub async fn call_tool(&mut self, name: &str, arguments: Value) -> Value {
        self.call_tool_with(name, arguments, false, None).await
    }

    /// Calls a tool, collecting its progress notifications into the answer's `progress`
    /// (`[{"progress", "total", "message"}]`) if `progress`, and cancelling the call after
    /// `cancel_after_ms` if given (the SDK sends `notifications/cancelled`); a cancelled call
    /// answers `{"ok": true, "cancelled": true, "progress": [...]}`.
    pub async fn call_tool_with(
        &mut self,
        name: &str,
        arguments: Value,
        progress: bool,
        cancel_after_ms: Option<u64>,
    ) -> Value {
        let mut command = json!({
            "op": "call_tool",
            "name": name,
            "arguments": arguments,
            "progress": progress,
        });
        if let Some(ms) = cancel_after_ms {
            command["cancel_after_ms"] = json!(ms);
        }
        self.request(command).await
    }

    /// Closes the driver's stdin, so that it disconnects (stopping a stdio server the way the
    /// SDK does: close its stdin, then SIGTERM, then SIGKILL), and waits for it to exit.
    pub async fn close(mut self) -> ExitStatus {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the MCP driver for {}: {e}", self.target),
            Err(_) => {
                let tail = self.stderr_tail(false).await;
                panic!(
                    "MCP driver for {} did not exit within 30 s of its stdin closing\n\
                     driver stderr:\n{tail}",
                    self.target
                )
            }
        }
    }
}

fn client_args(client_name: &str, client_version: &str) -> [OsString; 4] {
    ["--client-name".into(), client_name.into(), "--client-version".into(), client_version.into()]
}
