//! Harness for end-to-end tests: a real controller on `127.0.0.1:0` with a fresh data directory
//! and PKI, real agents (in-process tasks or `tailops-agent` processes), real mutual TLS, real
//! SQLite. Nothing is mocked.

pub mod mcp_client;
pub mod netns;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tailops_agent::monitor::MonitorOptions;
use tailops_agent::ops::OpsConfig;
use tailops_agent::{EnrollOptions, LinkOptions};
use tailops_controller::Controller;
use tailops_controller::config::ControllerConfig;
use tailops_controller::data_dir::{self, DataDir, InitOptions};
use tailops_pki::Fingerprint;
use tailops_proto::v1::{
    self, audit_client::AuditClient, fleet_client::FleetClient, identity_client::IdentityClient,
    monitoring_client::MonitoringClient,
};
use tailopsctl::Profile;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Heartbeats in tests are fast so that liveness is observable in a second or two.
pub const TEST_HEARTBEAT: Duration = Duration::from_millis(200);

/// A controller serving on an ephemeral loopback port.
#[derive(Debug)]
pub struct TestController {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub url: String,
    pub admin: Profile,
    pub fingerprint: Fingerprint,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), tailops_controller::ControllerError>>,
}

impl TestController {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a controller after `configure` adjusts its configuration (on top of fast timing).
    pub async fn start_with(configure: impl FnOnce(&mut ControllerConfig)) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), configure).await
    }

    /// Like [`Self::start_with`], with its data directory at `dir/controller` (which the caller
    /// may have prepared, e.g. as a small filesystem of its own).
    pub async fn start_in(dir: TempDir, configure: impl FnOnce(&mut ControllerConfig)) -> Self {
        tailops_pki::install_crypto_provider();
        let data = DataDir::new(dir.path().join("controller"));
        let options = InitOptions {
            trust_domain: "test.tailops".into(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            advertise: vec!["localhost".into(), "127.0.0.1".into()],
        };
        let init = data_dir::initialize(&data, options).await.expect("init");
        set_fast_timing(&data, configure).await;

        let controller = Controller::open(&data).await.expect("open controller");
        let listener = controller.bind(None).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let url = format!("https://127.0.0.1:{}", addr.port());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(controller.serve(listener, shutdown.clone()));
        let mut admin = init.admin_profile;
        admin.endpoint = url.clone();
        Self { dir, addr, url, admin, fingerprint: init.ca_fingerprint, shutdown, server }
    }

    pub fn data_dir(&self) -> DataDir {
        DataDir::new(self.dir.path().join("controller"))
    }

    pub async fn fleet(&self) -> FleetClient<Channel> {
        self.fleet_as(&self.admin).await
    }

    pub async fn fleet_as(&self, profile: &Profile) -> FleetClient<Channel> {
        FleetClient::new(tailopsctl::connect(profile).await.expect("connects"))
    }

    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(tailopsctl::connect(&self.admin).await.expect("admin connects"))
    }

    pub async fn monitoring(&self) -> MonitoringClient<Channel> {
        MonitoringClient::new(tailopsctl::connect(&self.admin).await.expect("connects"))
    }

    pub async fn audit(&self) -> AuditClient<Channel> {
        self.audit_as(&self.admin).await
    }

    pub async fn audit_as(&self, profile: &Profile) -> AuditClient<Channel> {
        AuditClient::new(tailopsctl::connect(profile).await.expect("connects"))
    }

    /// Invites a user or bridge as the admin and logs it in; returns its profile.
    pub async fn principal(
        &self,
        kind: &str,
        name: &str,
        role: &str,
        scope: Option<v1::HostSelector>,
    ) -> Profile {
        let kind =
            if kind == "bridge" { v1::PrincipalKindProto::Bridge } else { v1::PrincipalKindProto::User };
        let invite = self
            .identity()
            .await
            .create_invite(v1::CreateInviteRequest {
                kind: kind as i32,
                name: name.to_owned(),
                role: role.to_owned(),
                scope,
                ttl_secs: 600,
            })
            .await
            .expect("invite")
            .into_inner();
        tailopsctl::login::login(tailopsctl::login::LoginOptions {
            controller_url: self.url.clone(),
            token: invite.token,
            ca_fingerprint: self.fingerprint,
        })
        .await
        .expect("login")
    }

    /// Stops the controller and starts it again on the same data directory and port.
    pub async fn restart(self) -> Self {
        self.shutdown.cancel();
        let _ = self.server.await;
        let controller =
            Controller::open(&DataDir::new(self.dir.path().join("controller"))).await.expect("reopen");
        let mut listener = None;
        for _ in 0..50 {
            match controller.bind(Some(self.addr)).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let listener = listener.expect("rebind the same port");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(controller.serve(listener, shutdown.clone()));
        Self { shutdown, server, ..self }
    }

    /// Writes the admin profile to a file (for the CLI binary) and returns its path.
    pub async fn admin_profile_file(&self) -> PathBuf {
        let path = self.dir.path().join("admin-test.profile.toml");
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            self.admin.save_new(&path).await.expect("save profile");
        }
        path
    }

    pub async fn token(&self, labels: &[(&str, &str)], uses: u32, ttl: Duration) -> String {
        let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.fleet()
            .await
            .create_join_token(v1::CreateJoinTokenRequest { labels, ttl_secs: ttl.as_secs(), uses })
            .await
            .expect("create token")
            .into_inner()
            .token
    }

    pub fn enroll_options(&self, token: &str, name: &str, state_dir: &Path) -> EnrollOptions {
        EnrollOptions {
            controller_url: self.url.clone(),
            token: token.to_owned(),
            ca_fingerprint: self.fingerprint,
            state_dir: state_dir.to_owned(),
            name: Some(name.to_owned()),
            labels: BTreeMap::new(),
        }
    }

    /// Enrolls a new host with its own token carrying `labels` and starts it in-process.
    pub async fn agent(&self, name: &str, labels: &[(&str, &str)]) -> TestAgent {
        self.agent_with_monitor(name, labels, test_monitor()).await
    }

    /// Like [`Self::agent`], with its own monitoring options (`None`: no samples or facts).
    pub async fn agent_with_monitor(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        monitor: Option<MonitorOptions>,
    ) -> TestAgent {
        self.agent_with(name, labels, monitor, OpsConfig::default()).await
    }

    /// Like [`Self::agent`], with its own monitoring options and operation tools and policy.
    pub async fn agent_with(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        monitor: Option<MonitorOptions>,
        ops: OpsConfig,
    ) -> TestAgent {
        let token = self.token(labels, 1, Duration::from_secs(60)).await;
        let state_dir = tempfile::tempdir().expect("agent dir");
        tailops_agent::enroll(self.enroll_options(&token, name, state_dir.path())).await.expect("enroll");
        let agent = TestAgent::start_with(state_dir, name, monitor, ops);
        self.wait_online(name, true).await;
        agent
    }

    pub async fn host(&self, name: &str) -> Option<v1::Host> {
        let hosts =
            self.fleet().await.list_hosts(v1::ListHostsRequest::default()).await.expect("list").into_inner();
        hosts.hosts.into_iter().find(|h| h.name == name)
    }

    /// Waits (up to 20 s) until host `name` is online (or offline).
    pub async fn wait_online(&self, name: &str, online: bool) {
        for _ in 0..200 {
            if self.host(name).await.is_some_and(|h| h.online == online) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("host {name} did not become {}", if online { "online" } else { "offline" });
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}

async fn set_fast_timing(data: &DataDir, configure: impl FnOnce(&mut ControllerConfig)) {
    write_test_config(data.path(), TEST_HEARTBEAT, 3, configure).await;
}

/// Rewrites the configuration in the controller data directory `data` for tests: liveness from
/// `heartbeat` and `missed` heartbeats, rate limits out of the way of tests that make many calls
/// in a burst (the limits get their own tests), then `configure`.
pub(crate) async fn write_test_config(
    data: &Path,
    heartbeat: Duration,
    missed: u32,
    configure: impl FnOnce(&mut ControllerConfig),
) -> ControllerConfig {
    let path = data.join(data_dir::CONFIG_FILE);
    let text = tokio::fs::read_to_string(&path).await.expect("read config");
    let mut config: ControllerConfig = toml::from_str(&text).expect("parse config");
    config.timing.heartbeat_interval_ms = u64::try_from(heartbeat.as_millis()).expect("ms");
    config.timing.offline_after_missed = missed;
    config.rate_limits.admin_per_minute = 10_000;
    config.rate_limits.control_per_minute = 10_000;
    config.rate_limits.exec_per_minute = 10_000;
    config.rate_limits.enroll_per_minute_per_address = 10_000;
    configure(&mut config);
    tokio::fs::write(&path, toml::to_string(&config).expect("toml")).await.expect("write config");
    config
}

/// Samples every half second; facts once at start (then every minute), so tests that do not
/// look at monitoring pay little for it.
pub fn test_monitor() -> Option<MonitorOptions> {
    Some(MonitorOptions {
        sample_interval: Duration::from_millis(500),
        facts_interval: Duration::from_secs(60),
        ..MonitorOptions::default()
    })
}

/// An agent running as a task in the test process.
#[derive(Debug)]
pub struct TestAgent {
    pub name: String,
    pub state_dir: TempDir,
    monitor: Option<MonitorOptions>,
    ops: Arc<OpsConfig>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestAgent {
    pub fn start(state_dir: TempDir, name: &str) -> Self {
        Self::start_with(state_dir, name, test_monitor(), OpsConfig::default())
    }

    pub fn start_with(
        state_dir: TempDir,
        name: &str,
        monitor: Option<MonitorOptions>,
        ops: OpsConfig,
    ) -> Self {
        let mut agent = Self {
            name: name.to_owned(),
            state_dir,
            monitor,
            ops: Arc::new(ops),
            shutdown: CancellationToken::new(),
            task: None,
        };
        agent.resume();
        agent
    }

    /// Disconnects (cleanly closing the stream); running jobs are stopped.
    pub async fn pause(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub fn resume(&mut self) {
        self.shutdown = CancellationToken::new();
        let mut options = LinkOptions::new(self.state_dir.path());
        options.min_backoff = Duration::from_millis(100);
        options.max_backoff = Duration::from_millis(500);
        options.monitor = self.monitor.clone();
        options.ops = self.ops.clone();
        let shutdown = self.shutdown.clone();
        self.task = Some(tokio::spawn(async move {
            tailops_agent::run(options, shutdown).await.expect("agent state is usable");
        }));
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Path of a workspace binary (`tailops-agent`, `tailopsctl`, ...). Test runners build only
/// libraries and test targets for other packages, so the first call in a test process builds the
/// workspace binaries with the same cargo (cargo's own lock serialises concurrent test processes).
pub async fn binary(name: &str) -> PathBuf {
    static BUILT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test binary> -> target/debug/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir").to_owned();
    BUILT
        .get_or_init(|| async {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            // Cargo sets these for test processes, not for the `cargo nextest` that built them;
            // ring's build script watches them, so passing them on rebuilt ring and everything
            // above it (~40 s) on every alternation between the two builds.
            let per_test = std::env::vars_os().filter_map(|(key, _)| {
                let name = key.to_str()?;
                let set_for_tests = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"]
                    .iter()
                    .any(|prefix| name.starts_with(prefix))
                    || ["CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&name);
                set_for_tests.then_some(key)
            });
            let mut command = tokio::process::Command::new(cargo);
            for key in per_test {
                command.env_remove(key);
            }
            let status = command
                .args(["build", "--workspace", "--bins"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .await
                .expect("run cargo build");
            assert!(status.success(), "building the workspace binaries failed");
        })
        .await;
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing after cargo build --workspace --bins", path.display());
    path
}

/// Runs the `tailopsctl` binary with `profile` and `args`.
pub async fn tailopsctl(profile: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(binary("tailopsctl").await)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .await
        .expect("run tailopsctl")
}

/// Starts `tailops-mcp --profile PROFILE --listen 127.0.0.1:0 EXTRA...` (no token from this
/// process's environment) and waits until it says where it listens; returns the child (killed
/// when dropped) and the URL it printed (`http://ADDR/mcp`).
pub async fn mcp_http_bridge(profile: &Path, extra: &[&str]) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(binary("tailops-mcp").await)
        .arg("--profile")
        .arg(profile)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("TAILOPS_MCP_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tailops-mcp");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if let Some(url) = line.strip_prefix("tailops-mcp listening on ") {
                return url.to_owned();
            }
        }
        panic!("tailops-mcp exited before listening");
    })
    .await
    .expect("tailops-mcp did not start listening");
    // Keep draining stderr so the bridge never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

/// Reads a job's events until it asks for approval; returns the job id.
pub async fn until_approval_required(stream: &mut tonic::Streaming<v1::JobEvent>) -> u64 {
    loop {
        let event = stream.message().await.expect("stream").expect("event");
        if matches!(event.kind, Some(v1::job_event::Kind::ApprovalRequired(_))) {
            return event.job_id;
        }
    }
}

/// Lossy UTF-8 of a process's output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `message` as a request that names the program it comes through (as the MCP bridge does), in
/// raw bytes so that tests can send what a hostile client might.
pub fn via<T>(message: T, client: &[u8]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = tonic::metadata::AsciiMetadataValue::try_from(client).expect("a valid header value");
    request.metadata_mut().insert(tailops_proto::CLIENT_HEADER, value);
    request
}

/// Convenience: an exec request.
pub fn exec_request(selector: v1::HostSelector, argv: &[&str], timeout: Duration) -> v1::RunJobRequest {
    v1::RunJobRequest {
        selector: Some(selector),
        action: Some(v1::JobAction {
            elevated: false,
            kind: Some(v1::job_action::Kind::Exec(v1::ExecAction {
                argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            })),
        }),
        timeout_ms: u64::try_from(timeout.as_millis()).expect("ms"),
        concurrency: 0,
        output_cap_bytes: 0,
        reason: String::new(),
        queue_for_ms: 0,
    }
}

pub fn all_hosts() -> v1::HostSelector {
    v1::HostSelector { all: true, ..Default::default() }
}

pub fn label_selector(key: &str, value: &str) -> v1::HostSelector {
    v1::HostSelector { labels: [(key.to_owned(), value.to_owned())].into(), ..Default::default() }
}

/// Collects every event of a job stream until it ends.
pub async fn collect_events(mut stream: tonic::Streaming<v1::JobEvent>) -> Vec<v1::JobEvent> {
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("job stream stalled")
        .expect("job stream error")
    {
        events.push(event);
    }
    events
}

/// Everything one host wrote to one stream, from a job's events.
pub fn output_of(events: &[v1::JobEvent], host: &str, stream: v1::OutputStream) -> String {
    let mut bytes = Vec::new();
    for event in events {
        if let Some(v1::job_event::Kind::Output(out)) = &event.kind
            && out.target.as_ref().is_some_and(|t| t.host_name == host)
            && out.stream() == stream
        {
            bytes.extend_from_slice(&out.data);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The `finished` events by host name.
pub fn finished_by_host(events: &[v1::JobEvent]) -> BTreeMap<String, v1::TargetFinished> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::job_event::Kind::Finished(f)) => {
                Some((f.target.clone().unwrap_or_default().host_name, f.clone()))
            }
            _ => None,
        })
        .collect()
}

pub fn completed(events: &[v1::JobEvent]) -> v1::JobCompleted {
    events
        .iter()
        .find_map(|e| match &e.kind {
            Some(v1::job_event::Kind::Completed(c)) => Some(*c),
            _ => None,
        })
        .expect("job completed")
}

/// Whether process `pid` is still alive (zombies count as gone: they no longer run).
pub async fn process_alive(pid: i32) -> bool {
    match tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

// ----- typed operations -------------------------------------------------------------------

/// A typed-operation job for one host, with a one-minute deadline.
pub fn op_request(host: &str, name: &str, params: &[(&str, &str)], dry_run: bool) -> v1::RunJobRequest {
    op_request_with(host, name, params, dry_run, Duration::from_secs(60))
}

/// A typed-operation job for one host with its own deadline.
pub fn op_request_with(
    host: &str,
    name: &str,
    params: &[(&str, &str)],
    dry_run: bool,
    timeout: Duration,
) -> v1::RunJobRequest {
    v1::RunJobRequest {
        selector: Some(v1::HostSelector { hosts: vec![host.to_owned()], ..Default::default() }),
        action: Some(v1::JobAction {
            elevated: false,
            kind: Some(v1::job_action::Kind::Operation(v1::OperationAction {
                name: name.to_owned(),
                params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
                dry_run,
            })),
        }),
        timeout_ms: u64::try_from(timeout.as_millis()).expect("ms"),
        ..Default::default()
    }
}

/// Runs an operation on one host as the admin; returns how it ended there.
pub async fn run_op(
    controller: &TestController,
    host: &str,
    name: &str,
    params: &[(&str, &str)],
    dry_run: bool,
) -> (v1::TargetState, v1::CommandResult) {
    let (state, result, _) = run_request(controller, host, op_request(host, name, params, dry_run)).await;
    (state, result)
}

/// Runs a job request on one host; returns its final state, result and streamed stdout.
pub async fn run_request(
    controller: &TestController,
    host: &str,
    request: v1::RunJobRequest,
) -> (v1::TargetState, v1::CommandResult, String) {
    let stream = controller.fleet().await.run_job(request).await.expect("accepted").into_inner();
    let events = collect_events(stream).await;
    let stdout = output_of(&events, host, v1::OutputStream::Stdout);
    let finished = finished_by_host(&events).remove(host).expect("a result from the host");
    (finished.state(), finished.result.unwrap_or_default(), stdout)
}

/// The structured output of an operation's result; panics with the error when there is none.
pub fn op_output(result: &v1::CommandResult) -> v1::OperationOutput {
    match result.output.as_ref().and_then(|o| o.kind.clone()) {
        Some(v1::action_output::Kind::Operation(op)) => op,
        other => panic!("no operation output: {other:?} (error: {})", result.error),
    }
}

/// One field of an operation's record as text ("" when absent).
pub fn field(record: &v1::Record, name: &str) -> String {
    match record.fields.get(name).and_then(|s| s.value.clone()) {
        Some(v1::scalar::Value::Text(t)) => t,
        Some(v1::scalar::Value::Int(n)) => n.to_string(),
        Some(v1::scalar::Value::Flag(b)) => b.to_string(),
        Some(v1::scalar::Value::Real(x)) => x.to_string(),
        None => String::new(),
    }
}

/// Writes an executable script: a stand-in for a tool the agent runs.
pub async fn stand_in(path: &Path, body: &str) -> PathBuf {
    tokio::fs::write(path, body).await.expect("write stand-in");
    let chmod = tokio::process::Command::new("chmod").arg("755").arg(path).status().await.expect("chmod");
    assert!(chmod.success());
    path.to_owned()
}

/// The lines stand-ins appended to `calls.log` in `dir`: what the agent actually ran.
pub async fn calls(dir: &Path) -> Vec<String> {
    tokio::fs::read_to_string(dir.join("calls.log"))
        .await
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs a shell snippet (test setup only).
pub async fn sh(script: &str) -> std::process::Output {
    tokio::process::Command::new("sh").args(["-c", script]).output().await.expect("run sh")
}

/// A real `tailops-agent` process (without monitoring unless asked: heartbeats alone show
/// whether its link is alive), enrolled in its own state directory, that can be killed (SIGKILL:
/// no chance to clean up) and started again on the same state. Killed when dropped.
#[derive(Debug)]
pub struct AgentProcess {
    pub name: String,
    pub state_dir: TempDir,
    binary: PathBuf,
    launch: AgentLaunch,
    child: Option<tokio::process::Child>,
    log: PathBuf,
}

/// How an [`AgentProcess`] is started.
#[derive(Debug, Clone, Default)]
pub struct AgentLaunch {
    /// Environment for the agent, enrollment included (e.g. [`faketime`]).
    pub env: Vec<(String, String)>,
    /// Extra arguments for `tailops-agent run`.
    pub args: Vec<String>,
    /// Sample every second instead of `--no-monitoring`.
    pub monitoring: bool,
}

/// Environment that shifts a process's wall clock by `offset` (`-10m`, `+2h`) through
/// libfaketime (Debian package `faketime`, installed by `.ci/deps`), preloaded into the agent
/// itself so that killing it kills the agent. Monotonic clocks are left alone: timers and
/// timeouts work as on a real host whose clock is set wrong.
pub fn faketime(offset: &str) -> Vec<(String, String)> {
    let library = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"]
        .iter()
        .map(|dir| Path::new(dir).join("faketime/libfaketime.so.1"))
        .find(|path| path.is_file())
        .expect(
            "the clock-skew tests need libfaketime (Debian package faketime; `.ci/deps` installs it as root)",
        );
    [
        ("LD_PRELOAD", library.to_string_lossy().as_ref()),
        ("FAKETIME", offset),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec()
}

impl AgentProcess {
    /// Enrolls `name` with the agent binary and starts it; returns once it is online.
    pub async fn start(controller: &TestController, name: &str) -> Self {
        Self::launch(controller, name, AgentLaunch::default()).await
    }

    /// Like [`Self::start`], with extra arguments for `tailops-agent run`.
    pub async fn start_with(controller: &TestController, name: &str, args: &[String]) -> Self {
        Self::launch(controller, name, AgentLaunch { args: args.to_vec(), ..AgentLaunch::default() }).await
    }

    /// Enrolls and starts `name` as `launch` says; returns once it is online.
    pub async fn launch(controller: &TestController, name: &str, launch: AgentLaunch) -> Self {
        // Built before the token's minute starts: a cold build can take longer than that.
        let binary = binary("tailops-agent").await;
        let token = controller.token(&[], 1, Duration::from_secs(60)).await;
        let state_dir = tempfile::tempdir().expect("dir");
        let enroll = tokio::process::Command::new(&binary)
            .envs(launch.env.iter().cloned())
            .args(["enroll", "--controller", &controller.url, "--ca-fingerprint"])
            .arg(controller.fingerprint.to_string())
            .args(["--name", name, "--state-dir"])
            .arg(state_dir.path())
            .env("TAILOPS_JOIN_TOKEN", &token)
            .output()
            .await
            .expect("run enroll");
        assert!(enroll.status.success(), "{}", text(&enroll.stderr));
        let log = state_dir.path().join("agent.log");
        let mut agent = Self { name: name.to_owned(), state_dir, binary, launch, child: None, log };
        agent.run();
        controller.wait_online(name, true).await;
        agent
    }

    /// Starts the process (again) on its state directory; its log is appended to.
    pub fn run(&mut self) {
        // A child's stdio needs a std file; opening one is a moment's work in a test.
        #[allow(clippy::disallowed_methods)]
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let monitoring: &[&str] =
            if self.launch.monitoring { &["--sample-interval", "1s"] } else { &["--no-monitoring"] };
        let child = tokio::process::Command::new(&self.binary)
            .envs(self.launch.env.iter().cloned())
            .arg("run")
            .args(monitoring)
            .arg("--state-dir")
            .arg(self.state_dir.path())
            .args(&self.launch.args)
            .env("RUST_LOG", "info")
            .stderr(log.try_clone().expect("log"))
            .stdout(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start agent");
        self.child = Some(child);
    }

    /// SIGKILL: the agent dies mid-whatever, leaving its children behind.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill agent");
        }
    }

    /// What the agent logged so far.
    pub async fn log(&self) -> String {
        tokio::fs::read_to_string(&self.log).await.unwrap_or_default()
    }

    /// Resident memory of the agent process, from `/proc/PID/status`.
    pub async fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().and_then(tokio::process::Child::id).expect("running");
        let status = tokio::fs::read_to_string(format!("/proc/{pid}/status")).await.expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

/// Waits (up to 30 s) until `path` exists and holds a line; returns its contents.
pub async fn wait_for_file(path: &Path) -> String {
    for _ in 0..300 {
        if let Ok(text) = tokio::fs::read_to_string(path).await
            && text.ends_with('\n')
        {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} was not written", path.display());
}

/// Reads a job's events until one matches `wanted` (up to 60 s); returns the events read.
pub async fn events_until(
    stream: &mut tonic::Streaming<v1::JobEvent>,
    wanted: impl Fn(&v1::JobEvent) -> bool,
) -> Vec<v1::JobEvent> {
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("job stream stalled")
            .expect("job stream error")
            .expect("the job ended before the event came");
        let done = wanted(&event);
        events.push(event);
        if done {
            return events;
        }
    }
}
