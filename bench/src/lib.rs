//! The TailOps benchmark harness.
//!
//! A real controller (temp data dir, real SQLite, real mTLS) runs on its own tokio runtime
//! (threads named `ctl-rt`); simulated agents run the real agent link code on a second runtime
//! (`sim-rt`) with only the executor replaced by an instant no-op. Both share this machine's
//! cores, as the reports say. CPU is attributed per runtime from `/proc/self/task`.
//!
//! Alternatively ([`ControllerMode::OwnProcess`]) the controller runs in a child process (see
//! [`controller_process`]): each process then holds one end of every connection, and the
//! controller's CPU and memory are its process's own.

pub mod controller_process;
pub mod measure;
pub mod scenarios;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use tailops_agent::executor::{ExecSpec, Executor, OutputChunk};
use tailops_agent::{AgentState, EnrollOptions, LinkOptions};
use tailops_controller::Controller;
use tailops_controller::config::ControllerConfig;
use tailops_controller::data_dir::{self, DataDir, InitOptions};
use tailops_pki::Fingerprint;
use tailops_proto::v1::{self, fleet_client::FleetClient};
use tailopsctl::Profile;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::controller_process::ControllerProcess;
use crate::measure::{CpuTimes, Lag, LagProbe, process_cpu_seconds, rss_bytes};

/// The executor of simulated agents: every command "succeeds" at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct InstantExecutor;

impl Executor for InstantExecutor {
    fn execute(
        &self,
        _spec: ExecSpec,
        _cancel: CancellationToken,
        _output: tokio::sync::mpsc::Sender<OutputChunk>,
        _spawned: tokio::sync::oneshot::Sender<tailops_agent::executor::Spawned>,
    ) -> BoxFuture<'static, v1::CommandResult> {
        Box::pin(async { v1::CommandResult { exit_code: Some(0), ..Default::default() } })
    }
}

/// Where the controller runs.
#[derive(Debug, Clone)]
pub enum ControllerMode {
    /// On a runtime of its own (`ctl-rt`) in this process, next to the simulated agents.
    InProcess,
    /// In a child process: `binary serve-controller ...`, where `binary` is `tailops-bench`.
    OwnProcess { binary: PathBuf },
}

/// A controller (on its own runtime or in its own process), plus the runtime simulated agents
/// and clients run on.
#[derive(Debug)]
pub struct Bench {
    pub dir: tempfile::TempDir,
    pub sim_rt: Runtime,
    pub addr: SocketAddr,
    pub url: String,
    pub admin: Profile,
    pub fingerprint: Fingerprint,
    controller: ControllerHost,
    agents: Vec<SimAgent>,
    /// Agent state directories handed out so far. Scenarios enroll agents of their own (ingest,
    /// footprint) that never join `agents`, so this, not `agents.len()`, numbers the next one.
    enrolled: std::sync::atomic::AtomicUsize,
}

#[derive(Debug)]
enum ControllerHost {
    InProcess(InProcessController),
    OwnProcess {
        binary: PathBuf,
        /// `None` only while it is being restarted. Boxed: the handle (pipes, buffers) is large.
        process: Option<Box<ControllerProcess>>,
    },
}

#[derive(Debug)]
struct InProcessController {
    runtime: Runtime,
    probe: LagProbe,
    shutdown: CancellationToken,
    server: Option<ServerTask>,
}

type ServerTask = tokio::task::JoinHandle<Result<(), tailops_controller::ControllerError>>;

/// Resident memory of this process and, when the controller runs in its own process, of that one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub harness_bytes: u64,
    pub controller_bytes: Option<u64>,
}

#[derive(Debug)]
struct SimAgent {
    state: AgentState,
    shutdown: CancellationToken,
}

pub(crate) fn runtime(name: &'static str, threads: usize) -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// The controller process, unless a restart failed and left none.
fn running(process: Option<&ControllerProcess>) -> anyhow::Result<&ControllerProcess> {
    process.context("no controller process: its restart failed")
}

/// Binds the controller's listener, retrying while a restarted controller's old port is still
/// being released.
pub(crate) async fn bind_retrying(
    controller: &Controller,
    addr: SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    let mut tries = 0;
    loop {
        match controller.bind(Some(addr)).await {
            Ok(listener) => return Ok(listener),
            Err(e) if tries < 50 => {
                tries += 1;
                tracing::debug!(error = %e, "rebinding");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes a fresh controller data directory. Limits that would throttle the load generator
/// (rate limits) are raised; everything else keeps its defaults.
async fn initialize_data_dir(data: &DataDir, heartbeat: Duration) -> anyhow::Result<data_dir::Initialized> {
    let options = InitOptions {
        trust_domain: "bench.tailops".into(),
        listen: "127.0.0.1:0".parse()?,
        advertise: vec!["localhost".into(), "127.0.0.1".into()],
    };
    let init = data_dir::initialize(data, options).await?;
    let path = data.file(data_dir::CONFIG_FILE);
    let mut config: ControllerConfig = toml::from_str(&tokio::fs::read_to_string(&path).await?)?;
    config.timing.heartbeat_interval_ms = u64::try_from(heartbeat.as_millis())?;
    config.limits.max_join_token_uses = 1_000_000;
    config.rate_limits.observe_per_minute = 1_000_000;
    config.rate_limits.admin_per_minute = 1_000_000;
    config.rate_limits.control_per_minute = 1_000_000;
    config.rate_limits.exec_per_minute = 1_000_000;
    config.rate_limits.enroll_per_minute_per_address = 1_000_000;
    config.rate_limits.agent_connects_per_minute = 1_000_000;
    // Every simulated agent connects from 127.0.0.1, thousands at once.
    config.network.max_connections = 1_000_000;
    config.network.max_connections_per_address = 1_000_000;
    config.network.max_unauthenticated_per_address = 1_000_000;
    config.network.max_unauthenticated = 1_000_000;
    tokio::fs::write(&path, toml::to_string(&config)?).await?;
    Ok(init)
}

impl InProcessController {
    /// Opens the controller and serves it on `runtime`; returns its address and the server task.
    fn serve(
        runtime: &Runtime,
        data: &DataDir,
        addr: Option<SocketAddr>,
    ) -> anyhow::Result<(SocketAddr, CancellationToken, ServerTask)> {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let (addr, server) = runtime.block_on(async {
            let controller = Controller::open(data).await?;
            let listener = bind_retrying(&controller, addr.unwrap_or("127.0.0.1:0".parse()?)).await?;
            let addr = listener.local_addr()?;
            anyhow::Ok((addr, tokio::spawn(controller.serve(listener, stop))))
        })?;
        Ok((addr, shutdown, server))
    }
}

impl Bench {
    /// Initialises a data directory and starts the controller where `mode` says. Limits that
    /// would throttle the load generator (rate limits) are raised; everything else keeps its
    /// defaults. The controller runtime's lag probe starts with it.
    pub fn start(heartbeat: Duration, mode: ControllerMode) -> anyhow::Result<Self> {
        tailops_pki::install_crypto_provider();
        let sim_rt = runtime("sim-rt", 2)?;
        let dir = tempfile::tempdir()?;
        let data = DataDir::new(dir.path().join("controller"));
        let (init, addr, controller) = match mode {
            ControllerMode::InProcess => {
                let runtime = runtime("ctl-rt", 2)?;
                let init = runtime.block_on(initialize_data_dir(&data, heartbeat))?;
                let (addr, shutdown, server) = InProcessController::serve(&runtime, &data, None)?;
                let probe = LagProbe::start(runtime.handle());
                let controller = InProcessController { runtime, probe, shutdown, server: Some(server) };
                (init, addr, ControllerHost::InProcess(controller))
            }
            ControllerMode::OwnProcess { binary } => {
                // This process writes the data directory, as in-process; the child only serves it.
                let init = sim_rt.block_on(initialize_data_dir(&data, heartbeat))?;
                let listen = "127.0.0.1:0".parse()?;
                let process = sim_rt.block_on(ControllerProcess::spawn(&binary, data.path(), listen))?;
                let addr = process.addr();
                (init, addr, ControllerHost::OwnProcess { binary, process: Some(Box::new(process)) })
            }
        };
        let mut bench = Self {
            dir,
            sim_rt,
            addr,
            url: String::new(),
            admin: init.admin_profile,
            fingerprint: init.ca_fingerprint,
            controller,
            agents: Vec::new(),
            enrolled: std::sync::atomic::AtomicUsize::new(0),
        };
        bench.set_addr(addr);
        Ok(bench)
    }

    fn set_addr(&mut self, addr: SocketAddr) {
        self.addr = addr;
        self.url = format!("https://127.0.0.1:{}", addr.port());
        self.admin.endpoint = self.url.clone();
    }

    fn data_dir(&self) -> DataDir {
        DataDir::new(self.dir.path().join("controller"))
    }

    /// `"in-process"` or `"own-process"`, as the results say.
    pub fn mode_name(&self) -> &'static str {
        match self.controller {
            ControllerHost::InProcess(_) => "in-process",
            ControllerHost::OwnProcess { .. } => "own-process",
        }
    }

    /// The controller's process id when it runs in a process of its own.
    pub fn controller_pid(&self) -> Option<u32> {
        match &self.controller {
            ControllerHost::InProcess(_) => None,
            ControllerHost::OwnProcess { process, .. } => process.as_deref().map(ControllerProcess::pid),
        }
    }

    /// Forgets the controller runtime's scheduling lag measured so far (to measure one phase).
    pub async fn reset_lag(&self) -> anyhow::Result<()> {
        match &self.controller {
            ControllerHost::InProcess(controller) => {
                controller.probe.reset();
                Ok(())
            }
            ControllerHost::OwnProcess { process, .. } => running(process.as_deref())?.reset_lag().await,
        }
    }

    /// The controller runtime's scheduling lag since the last [`Bench::reset_lag`].
    pub async fn controller_lag(&self) -> anyhow::Result<Lag> {
        match &self.controller {
            ControllerHost::InProcess(controller) => Ok(controller.probe.lag()),
            ControllerHost::OwnProcess { process, .. } => running(process.as_deref())?.lag().await,
        }
    }

    /// CPU used so far. In-process: split by thread (controller = `ctl-rt` + SQLite workers).
    /// Own process: the controller's whole process, and this whole process as load generator.
    pub async fn cpu_times(&self) -> anyhow::Result<CpuTimes> {
        match &self.controller {
            ControllerHost::InProcess(_) => Ok(CpuTimes::now().await),
            ControllerHost::OwnProcess { process, .. } => {
                let pid = running(process.as_deref())?.pid().to_string();
                let controller_s = process_cpu_seconds(&pid).await;
                let agents_s = process_cpu_seconds("self").await;
                Ok(CpuTimes { controller_s, agents_s, total_s: controller_s + agents_s })
            }
        }
    }

    /// Resident memory now: this process's, and the controller process's if it has one.
    pub async fn memory(&self) -> anyhow::Result<Memory> {
        let harness_bytes = rss_bytes("self").await;
        let controller_bytes = match &self.controller {
            ControllerHost::InProcess(_) => None,
            ControllerHost::OwnProcess { process, .. } => {
                Some(rss_bytes(&running(process.as_deref())?.pid().to_string()).await)
            }
        };
        Ok(Memory { harness_bytes, controller_bytes })
    }

    /// Stops the controller (closing every agent stream) and starts it again on the same port.
    pub fn restart_controller(&mut self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let addr = match &mut self.controller {
            ControllerHost::InProcess(controller) => {
                controller.shutdown.cancel();
                if let Some(server) = controller.server.take() {
                    controller.runtime.block_on(server)??;
                }
                let (addr, shutdown, server) =
                    InProcessController::serve(&controller.runtime, &data, Some(self.addr))?;
                controller.shutdown = shutdown;
                controller.server = Some(server);
                addr
            }
            ControllerHost::OwnProcess { binary, process } => {
                let old = process.take();
                let new = self.sim_rt.block_on(async {
                    if let Some(old) = old {
                        (*old).stop().await?;
                    }
                    ControllerProcess::spawn(binary, data.path(), self.addr).await
                })?;
                let addr = new.addr();
                *process = Some(Box::new(new));
                addr
            }
        };
        self.set_addr(addr);
        Ok(())
    }

    /// Kills the controller process (SIGKILL) and starts a new one on the same data directory
    /// and port. Only with the controller in its own process: a runtime cannot be killed.
    pub fn kill_and_restart_controller(&mut self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let ControllerHost::OwnProcess { binary, process } = &mut self.controller else {
            anyhow::bail!("killing the controller needs it in its own process (--controller-process)");
        };
        let old = process.take();
        let new = self.sim_rt.block_on(async {
            if let Some(old) = old {
                (*old).kill().await?;
            }
            ControllerProcess::spawn(binary, data.path(), self.addr).await
        })?;
        let addr = new.addr();
        *process = Some(Box::new(new));
        self.set_addr(addr);
        Ok(())
    }

    pub async fn audit(&self) -> anyhow::Result<tailops_proto::v1::audit_client::AuditClient<Channel>> {
        Ok(tailops_proto::v1::audit_client::AuditClient::new(tailopsctl::connect(&self.admin).await?))
    }

    pub async fn fleet(&self) -> anyhow::Result<FleetClient<Channel>> {
        Ok(FleetClient::new(tailopsctl::connect(&self.admin).await?)
            .max_decoding_message_size(64 * 1024 * 1024))
    }

    /// Enrolls `n` new agents, `parallel` at a time; returns their states (not yet running).
    pub fn enroll(&self, n: usize, parallel: usize) -> anyhow::Result<Vec<AgentState>> {
        let first = self.enrolled.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.sim_rt.block_on(async {
            let token = self
                .fleet()
                .await?
                .create_join_token(v1::CreateJoinTokenRequest {
                    labels: Default::default(),
                    ttl_secs: 3600,
                    uses: u32::try_from(n)?,
                })
                .await?
                .into_inner()
                .token;
            let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
            let mut tasks = Vec::with_capacity(n);
            for i in 0..n {
                let permit = semaphore.clone().acquire_owned().await?;
                let options = EnrollOptions {
                    controller_url: self.url.clone(),
                    token: token.clone(),
                    ca_fingerprint: self.fingerprint,
                    state_dir: self.agent_dir(first + i),
                    name: Some(format!("sim-{:05}", first + i)),
                    labels: Default::default(),
                };
                tasks.push(tokio::spawn(async move {
                    let state = tailops_agent::enroll(options).await;
                    drop(permit);
                    state
                }));
            }
            let mut states = Vec::with_capacity(n);
            for task in tasks {
                states.push(task.await??);
            }
            anyhow::Ok(states)
        })
    }

    fn agent_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join("agents").join(i.to_string())
    }

    /// Starts simulated agents for `states` (real link code, instant executor).
    pub fn run_agents(&mut self, states: Vec<AgentState>) {
        for state in states {
            let shutdown = CancellationToken::new();
            let mut options = LinkOptions::new(state.dir.clone());
            options.executor = Arc::new(InstantExecutor);
            options.monitor = None;
            let running = state.clone();
            let stop = shutdown.clone();
            self.sim_rt.spawn(tailops_agent::run_with_state(running, options, stop));
            self.agents.push(SimAgent { state, shutdown });
        }
    }

    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Stops simulated agents `from..from + n` (mod the fleet) and starts them again on their
    /// state: a rolling reconnect, as after an agent upgrade or a network blip.
    pub fn restart_agents(&mut self, from: usize, n: usize) {
        let total = self.agents.len();
        for i in (0..n.min(total)).map(|k| (from + k) % total) {
            let agent = &mut self.agents[i];
            agent.shutdown.cancel();
            let shutdown = CancellationToken::new();
            let mut options = LinkOptions::new(agent.state.dir.clone());
            options.executor = Arc::new(InstantExecutor);
            options.monitor = None;
            self.sim_rt.spawn(tailops_agent::run_with_state(agent.state.clone(), options, shutdown.clone()));
            agent.shutdown = shutdown;
        }
    }

    /// Open file descriptors of the controller's process (own-process mode only).
    pub async fn controller_fds(&self) -> Option<usize> {
        let pid = self.controller_pid()?;
        let mut entries = tokio::fs::read_dir(format!("/proc/{pid}/fd")).await.ok()?;
        let mut n = 0;
        while let Ok(Some(_)) = entries.next_entry().await {
            n += 1;
        }
        Some(n)
    }

    /// The names of the running simulated agents.
    pub fn agent_names(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.state.config.name.clone()).collect()
    }

    /// Number of hosts the controller reports online.
    pub async fn online(&self) -> anyhow::Result<usize> {
        let hosts = self.fleet().await?.list_hosts(v1::ListHostsRequest::default()).await?.into_inner().hosts;
        Ok(hosts.iter().filter(|h| h.online).count())
    }

    /// Waits until `n` hosts are online; returns how long it took.
    pub fn wait_online(&self, n: usize, limit: Duration) -> anyhow::Result<Duration> {
        self.sim_rt.block_on(async {
            let started = tokio::time::Instant::now();
            loop {
                if self.online().await.unwrap_or(0) >= n {
                    return Ok(started.elapsed());
                }
                if started.elapsed() > limit {
                    anyhow::bail!(
                        "only {} of {n} agents online after {limit:?}",
                        self.online().await.unwrap_or(0)
                    );
                }
                // Listing a large fleet is itself work for the controller: poll gently.
                tokio::time::sleep(Duration::from_millis(if n > 1000 { 500 } else { 50 })).await;
            }
        })
    }

    /// The controller's SQLite database.
    pub fn database(&self) -> std::path::PathBuf {
        self.data_dir().file(data_dir::DATABASE)
    }

    pub fn stop_agents(&mut self) {
        for agent in self.agents.drain(..) {
            agent.shutdown.cancel();
            drop(agent.state);
        }
    }
}

/// An agent's stream opened by hand (hello sent, welcome received): the outbox to push messages
/// and the inbound stream, which must be kept alive for the stream to stay open.
pub async fn open_link(
    state: &AgentState,
) -> anyhow::Result<(tokio::sync::mpsc::Sender<v1::AgentMessage>, tonic::Streaming<v1::ControllerMessage>)> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&state.ca_pem))
        .identity(Identity::from_pem(&state.cert_pem, &state.key_pem));
    let channel = Endpoint::from_shared(state.config.controller_url.clone())?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let (outbox, rx) = tokio::sync::mpsc::channel(64);
    let hello = v1::Hello { agent_version: "bench".into(), ..Default::default() };
    outbox.send(v1::AgentMessage { kind: Some(v1::agent_message::Kind::Hello(hello)) }).await?;
    let mut inbound = v1::agent_link_client::AgentLinkClient::new(channel)
        .max_decoding_message_size(16 * 1024 * 1024)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match inbound.message().await? {
        Some(v1::ControllerMessage { kind: Some(v1::controller_message::Kind::Welcome(_)) }) => {}
        other => anyhow::bail!("expected a welcome, got {other:?}"),
    }
    Ok((outbox, inbound))
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.stop_agents();
        match &mut self.controller {
            ControllerHost::InProcess(controller) => controller.shutdown.cancel(),
            ControllerHost::OwnProcess { process, .. } => {
                // Let it exit cleanly before its data directory goes. Inside a runtime block_on
                // is not allowed; then dropping the handle kills it (kill_on_drop).
                if let Some(process) = process.take()
                    && tokio::runtime::Handle::try_current().is_err()
                    && let Err(e) = self.sim_rt.block_on((*process).stop())
                {
                    tracing::warn!(error = %e, "stopping the controller process");
                }
            }
        }
    }
}
