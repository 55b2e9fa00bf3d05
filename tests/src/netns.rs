//! Real network partitions: a `tailops-controller` process and `tailops-agent` processes, each
//! agent in its own network namespace, joined to the controller by a veth pair on a bridge.
//! Links can then be cut (`ip link set eth0 down` on the agent's side) or blackholed (100 %
//! loss, so TCP hangs instead of resetting) and healed while jobs run.
//!
//! ```text
//!  root namespace                              agent namespaces
//!  tailops-controller on 10.A.B.1:7443
//!        │
//!   bridge topsPPPPPPNNb (10.A.B.1/24) ── topsPPPPPPNNh0 ══ eth0 10.A.B.10  tailops-PID-N-h0
//!                                     ── topsPPPPPPNNh1 ══ eth0 10.A.B.11  tailops-PID-N-h1
//!                                     ── ...
//! ```
//!
//! Every name carries the test process's pid and a per-process counter, and the /24 is derived
//! from them (skipping any prefix already routed here), so tests running in parallel processes
//! (nextest runs each test in its own) never share a namespace, a link or a subnet. Everything
//! is torn down on drop, also when the test panics; what a killed test process left behind is
//! removed by the next fixture that starts (its pid no longer runs).
//!
//! Needs root, `ip` (iproute2) and, for blackholes, `tc` with the `netem` qdisc or, where the
//! kernel lacks netem, `nft` with netdev ingress/egress hooks. Without them the tests print why
//! and return early; `.ci/deps` installs iproute2 and nftables in CI, which runs as root. Set
//! `TAILOPS_REQUIRE_NETNS=1` to make a missing facility a failure instead of a skip.
//!
//! Run: `cargo nextest run -p tailops-tests -E 'binary(partitions)'` (as root).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tailops_controller::config::ControllerConfig;
use tailops_controller::data_dir;
use tailops_proto::v1::{self, fleet_client::FleetClient};
use tailopsctl::Profile;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::binary;

/// Agents started by the fixture reconnect at most this long after a failed attempt, so a
/// healed link is used within seconds rather than the production 30 s.
pub const AGENT_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The controller's port on the bridge address (the address is unique per fixture).
const CONTROLLER_PORT: u16 = 7443;

/// How a blackhole drops packets. Both drop every frame in both directions on the wire, so
/// neither end's TCP sees an error or a reset: the connection just goes silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blackhole {
    /// `tc qdisc add dev DEV root netem loss 100%` on both ends of the veth pair.
    Netem,
    /// nftables netdev ingress and egress chains with policy drop on the agent's `eth0`: for
    /// kernels built without netem (the sandbox these tests were written in).
    Nftables,
}

/// One agent in its namespace.
#[derive(Debug)]
pub struct NsHost {
    pub name: String,
    pub netns: String,
    pub addr: Ipv4Addr,
    /// The veth end on the bridge, in the root namespace.
    root_dev: String,
    state_dir: PathBuf,
    log: PathBuf,
    child: Child,
}

/// A controller and agents in network namespaces; see the module documentation.
#[derive(Debug)]
pub struct NetnsFleet {
    pub url: String,
    pub admin: Profile,
    pub hosts: Vec<NsHost>,
    config: ControllerConfig,
    blackhole: Option<Blackhole>,
    controller_log: PathBuf,
    controller: Child,
    // Dropped after the processes (fields drop in declaration order).
    _topology: Topology,
    dir: TempDir,
}

/// Why a fixture cannot run here. Printed by the test, which then passes without running.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl NetnsFleet {
    /// Starts a controller and `agents` agents (named `h0`, `h1`, ...), each online, with fast
    /// heartbeats (`configure` may change the rest). `None` (after printing why) when network
    /// namespaces cannot be used here.
    pub async fn start(agents: usize, configure: impl FnOnce(&mut ControllerConfig)) -> Option<Self> {
        match Self::try_start(agents, configure).await {
            Ok(fleet) => Some(fleet),
            Err(Unavailable(why)) => {
                skip(&why);
                None
            }
        }
    }

    async fn try_start(
        agents: usize,
        configure: impl FnOnce(&mut ControllerConfig),
    ) -> Result<Self, Unavailable> {
        assert!(agents < 10, "interface names have room for one digit");
        tailops_pki::install_crypto_provider();
        // Built before anything is created: a cold build takes minutes, and a join token
        // lasts one.
        let controller_bin = binary("tailops-controller").await;
        let agent_bin = binary("tailops-agent").await;
        probe_namespaces().await?;
        sweep_leftovers().await;

        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 256;
        let prefix = format!("tailops-{pid}-{n}");
        let link_prefix = format!("tops{pid:06x}{n:02x}");
        let (a, b) = free_subnet(pid, n).await?;
        let gateway = Ipv4Addr::new(10, a, b, 1);

        let mut topology = Topology::default();
        let bridge = format!("{link_prefix}b");
        ip(&["link", "add", &bridge, "type", "bridge"]).await;
        topology.links.push(bridge.clone());
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &bridge]).await;
        ip(&["link", "set", &bridge, "up"]).await;

        let mut wiring = Vec::new();
        for i in 0..agents {
            let netns = format!("{prefix}-h{i}");
            let root_dev = format!("{link_prefix}h{i}");
            ip(&["netns", "add", &netns]).await;
            topology.namespaces.push(netns.clone());
            ip(&["link", "add", &root_dev, "type", "veth", "peer", "name", "eth0", "netns", &netns]).await;
            topology.links.push(root_dev.clone());
            ip(&["link", "set", &root_dev, "master", &bridge, "up"]).await;
            let addr = Ipv4Addr::new(10, a, b, 10 + u8::try_from(i).expect("few agents"));
            ip(&["-n", &netns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]).await;
            ip(&["-n", &netns, "link", "set", "eth0", "up"]).await;
            ip(&["-n", &netns, "link", "set", "lo", "up"]).await;
            wiring.push((format!("h{i}"), netns, addr, root_dev));
        }
        let blackhole = match wiring.first() {
            Some((_, netns, _, _)) => probe_blackhole(netns).await,
            None => None,
        };

        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("controller");
        let init = run(Command::new(&controller_bin)
            .arg("init")
            .arg("--data-dir")
            .arg(&data)
            .args(["--trust-domain", "netns.tailops"])
            .args(["--listen", &format!("{gateway}:{CONTROLLER_PORT}")])
            .args(["--advertise", &gateway.to_string()]))
        .await;
        let fingerprint = String::from_utf8_lossy(&init.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("CA fingerprint:").map(|f| f.trim().to_owned()))
            .expect("init prints the CA fingerprint");
        let config = write_test_config(&data, configure).await;

        let controller_log = dir.path().join("controller.log");
        let controller = Command::new(&controller_bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file(&controller_log).await)
            .kill_on_drop(true)
            .spawn()
            .expect("start tailops-controller");
        let admin = Profile::load(&data.join(data_dir::ADMIN_PROFILE)).await.expect("admin profile");
        let url = admin.endpoint.clone();
        let mut fleet = Self {
            url,
            admin,
            hosts: Vec::new(),
            config,
            blackhole,
            controller_log,
            controller,
            _topology: topology,
            dir,
        };
        fleet.wait_serving().await;

        for (name, netns, addr, root_dev) in wiring {
            let host = fleet.start_agent(&agent_bin, &fingerprint, name, netns, addr, root_dev).await;
            fleet.hosts.push(host);
        }
        for host in &fleet.hosts {
            fleet.wait_online(&host.name, true, Duration::from_secs(30)).await;
        }
        Ok(fleet)
    }

    async fn wait_serving(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(channel) = tailopsctl::connect(&self.admin).await
                && FleetClient::new(channel).list_hosts(v1::ListHostsRequest::default()).await.is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.controller.try_wait() {
                panic!("tailops-controller exited ({status}):\n{}", self.controller_log().await);
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tailops-controller did not serve on {} within 30 s:\n{}",
                self.url,
                self.controller_log().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn start_agent(
        &self,
        agent_bin: &Path,
        fingerprint: &str,
        name: String,
        netns: String,
        addr: Ipv4Addr,
        root_dev: String,
    ) -> NsHost {
        let token = self
            .fleet()
            .await
            .create_join_token(v1::CreateJoinTokenRequest {
                labels: [("fixture".to_owned(), "netns".to_owned())].into(),
                ttl_secs: 60,
                uses: 1,
            })
            .await
            .expect("create token")
            .into_inner()
            .token;
        let state_dir = self.dir.path().join(format!("agent-{name}"));
        run(Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(agent_bin)
            .args(["enroll", "--controller", &self.url, "--ca-fingerprint", fingerprint])
            .args(["--name", &name, "--state-dir"])
            .arg(&state_dir)
            .env("TAILOPS_JOIN_TOKEN", token))
        .await;
        let log = self.dir.path().join(format!("agent-{name}.log"));
        // `ip netns exec` execs the agent, so the child is the agent process itself.
        let child = Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(agent_bin)
            .args(["run", "--no-monitoring", "--max-backoff"])
            .arg(format!("{}ms", AGENT_MAX_BACKOFF.as_millis()))
            .arg("--state-dir")
            .arg(&state_dir)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file(&log).await)
            .kill_on_drop(true)
            .spawn()
            .expect("start tailops-agent");
        NsHost { name, netns, addr, root_dev, state_dir, log, child }
    }

    pub async fn fleet(&self) -> FleetClient<Channel> {
        FleetClient::new(tailopsctl::connect(&self.admin).await.expect("admin connects"))
    }

    pub fn host_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    fn ns_host(&self, name: &str) -> &NsHost {
        self.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The heartbeat interval the controller was started with.
    pub fn heartbeat_interval(&self) -> Duration {
        self.config.heartbeat_interval()
    }

    /// How long a silent agent stays online: heartbeat interval × `offline_after_missed`.
    pub fn offline_window(&self) -> Duration {
        self.config.offline_after()
    }

    /// How [`Self::blackhole`] drops packets here; `None` when it cannot.
    pub fn blackhole_method(&self) -> Option<Blackhole> {
        self.blackhole
    }

    /// Takes the agent's interface down inside its namespace: the controller sees nothing more
    /// from it, and nothing it sends arrives (no reset either way).
    pub async fn cut(&self, name: &str) {
        let host = self.ns_host(name);
        ip(&["-n", &host.netns, "link", "set", "eth0", "down"]).await;
    }

    pub async fn heal(&self, name: &str) {
        let host = self.ns_host(name);
        ip(&["-n", &host.netns, "link", "set", "eth0", "up"]).await;
    }

    /// Drops every packet between the agent and the bridge, both ways, with both interfaces
    /// up: TCP hangs, only heartbeats or keepalives can tell. Panics when this host can do
    /// neither netem nor nftables; check [`Self::blackhole_method`] first.
    pub async fn blackhole(&self, name: &str) {
        let host = self.ns_host(name);
        match self.blackhole.expect("no way to blackhole a link here; check blackhole_method()") {
            Blackhole::Netem => {
                tc(Some(&host.netns), &["qdisc", "add", "dev", "eth0", "root", "netem", "loss", "100%"])
                    .await;
                tc(None, &["qdisc", "add", "dev", &host.root_dev, "root", "netem", "loss", "100%"]).await;
            }
            Blackhole::Nftables => nft_blackhole(&host.netns).await.expect("nft blackhole"),
        }
    }

    pub async fn unblackhole(&self, name: &str) {
        let host = self.ns_host(name);
        match self.blackhole.expect("no way to blackhole a link here") {
            Blackhole::Netem => {
                tc(Some(&host.netns), &["qdisc", "del", "dev", "eth0", "root"]).await;
                tc(None, &["qdisc", "del", "dev", &host.root_dev, "root"]).await;
            }
            Blackhole::Nftables => {
                let out = netns_exec(&host.netns, "nft", &["delete", "table", "netdev", NFT_TABLE]).await;
                assert!(out.status.success(), "nft delete: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }

    pub async fn host(&self, name: &str) -> Option<v1::Host> {
        let hosts =
            self.fleet().await.list_hosts(v1::ListHostsRequest::default()).await.expect("list").into_inner();
        hosts.hosts.into_iter().find(|h| h.name == name)
    }

    /// Waits until `name` is online (or offline) in `ListHosts`; returns how long that took.
    /// Panics after `within`, with the agent's log.
    pub async fn wait_online(&self, name: &str, online: bool, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.host(name).await.is_some_and(|h| h.online == online) {
                return started.elapsed();
            }
            if started.elapsed() > within {
                panic!(
                    "host {name} did not become {} within {within:?}\n--- agent log ---\n{}\n--- controller log ---\n{}",
                    if online { "online" } else { "offline" },
                    self.agent_log(name).await,
                    self.controller_log().await,
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the agent process of `name` is still running.
    pub fn agent_running(&mut self, name: &str) -> bool {
        let host = self.hosts.iter_mut().find(|h| h.name == name).expect("host");
        matches!(host.child.try_wait(), Ok(None))
    }

    /// The agent's state directory (identity, pinned CA).
    pub fn agent_state_dir(&self, name: &str) -> &Path {
        &self.ns_host(name).state_dir
    }

    pub async fn controller_log(&self) -> String {
        tokio::fs::read_to_string(&self.controller_log).await.unwrap_or_default()
    }

    pub async fn agent_log(&self, name: &str) -> String {
        tokio::fs::read_to_string(&self.ns_host(name).log).await.unwrap_or_default()
    }
}

impl Drop for NetnsFleet {
    fn drop(&mut self) {
        // Jobs' processes run in their own process groups and would outlive their agent, keeping
        // the namespace alive; `Topology` kills whatever still runs in each namespace.
        for host in &mut self.hosts {
            let _ = host.child.start_kill();
        }
        let _ = self.controller.start_kill();
    }
}

/// Prints why a test does not run, or fails it where the environment promises it can.
pub fn skip(why: &str) {
    if std::env::var_os("TAILOPS_REQUIRE_NETNS").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("TAILOPS_REQUIRE_NETNS is set, but: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// What this fixture created, removed on drop in an order that never leaves a link behind.
#[derive(Debug, Default)]
struct Topology {
    namespaces: Vec<String>,
    links: Vec<String>,
}

impl Drop for Topology {
    // Drop cannot await, and teardown must happen even while a panic unwinds: a handful of
    // short `ip` calls, blocking on purpose.
    #[allow(clippy::disallowed_methods)]
    fn drop(&mut self) {
        let ip = |args: &[&str]| {
            let _ = std::process::Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        for netns in &self.namespaces {
            kill_everything_in(netns);
        }
        // Deleting the root end of a veth pair deletes both ends; the bridge goes last.
        for link in self.links.iter().rev() {
            ip(&["link", "del", link]);
        }
        for netns in &self.namespaces {
            ip(&["netns", "del", netns]);
        }
    }
}

/// SIGKILLs every process in `netns` (agents and the jobs they started).
#[allow(clippy::disallowed_methods)] // called from Drop; see `Topology::drop`
fn kill_everything_in(netns: &str) {
    let Ok(out) = std::process::Command::new("ip").args(["netns", "pids", netns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

async fn probe_namespaces() -> Result<(), Unavailable> {
    let probe = format!("tailops-{}-probe", std::process::id());
    let add = Command::new("ip").args(["netns", "add", &probe]).output().await;
    match add {
        Err(e) => Err(Unavailable(format!("network-namespace tests need `ip` (iproute2): {e}"))),
        Ok(out) if !out.status.success() => Err(Unavailable(format!(
            "network-namespace tests need root (`ip netns add` failed: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(_) => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output().await;
            Ok(())
        }
    }
}

/// netem where the kernel has it (what CI is meant to use), else nftables netdev hooks.
async fn probe_blackhole(netns: &str) -> Option<Blackhole> {
    let add = netns_exec(netns, "tc", &["qdisc", "add", "dev", "eth0", "root", "netem", "loss", "0%"]).await;
    if add.status.success() {
        netns_exec(netns, "tc", &["qdisc", "del", "dev", "eth0", "root"]).await;
        return Some(Blackhole::Netem);
    }
    let netem_error = String::from_utf8_lossy(&add.stderr).trim().to_owned();
    match nft_blackhole(netns).await {
        Ok(()) => {
            netns_exec(netns, "nft", &["delete", "table", "netdev", NFT_TABLE]).await;
            eprintln!("note: tc netem is unavailable ({netem_error}); blackholes use nftables");
            Some(Blackhole::Nftables)
        }
        Err(nft_error) => {
            eprintln!("note: cannot blackhole links: tc netem: {netem_error}; nft: {nft_error}");
            None
        }
    }
}

const NFT_TABLE: &str = "tailops_blackhole";

/// Drops at the device, below IP: the agent's TCP believes every segment left, like a lossy
/// wire, rather than failing sends as an `output` hook drop would.
async fn nft_blackhole(netns: &str) -> Result<(), String> {
    let rules = format!(
        "table netdev {NFT_TABLE} {{\n\
         \tchain in {{ type filter hook ingress device \"eth0\" priority -500; policy drop; }}\n\
         \tchain out {{ type filter hook egress device \"eth0\" priority -500; policy drop; }}\n\
         }}\n"
    );
    let path = std::env::temp_dir().join(format!("{netns}-blackhole.nft"));
    tokio::fs::write(&path, rules).await.map_err(|e| e.to_string())?;
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f"])
        .arg(&path)
        .output()
        .await
        .map_err(|e| format!("nft: {e}"))?;
    let _ = tokio::fs::remove_file(&path).await;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()) }
}

/// Removes namespaces and links of fixtures whose process is gone (killed before its drop ran).
async fn sweep_leftovers() {
    let dead = |pid: &str| pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    let netns =
        Command::new("ip").args(["netns", "list"]).output().await.map(|o| o.stdout).unwrap_or_default();
    for line in String::from_utf8_lossy(&netns).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if let Some(pid) = name.strip_prefix("tailops-").and_then(|r| r.split('-').next())
            && dead(pid)
        {
            let _ = Command::new("ip").args(["netns", "del", name]).output().await;
        }
    }
    let links =
        Command::new("ip").args(["-o", "link", "show"]).output().await.map(|o| o.stdout).unwrap_or_default();
    for line in String::from_utf8_lossy(&links).lines() {
        // "7: topsPPPPPPNNh0@if6: <...>"
        let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
        if let Some(pid) = name.strip_prefix("tops").and_then(|r| r.get(..6))
            && u32::from_str_radix(pid, 16).is_ok_and(|pid| dead(&pid.to_string()))
        {
            let _ = Command::new("ip").args(["link", "del", name]).output().await;
        }
    }
}

/// A /24 in 10/8 derived from the pid and counter, moving on while the candidate overlaps a
/// route this host already has (another fixture's bridge, or a real network in 10/8).
async fn free_subnet(pid: u32, n: u32) -> Result<(u8, u8), Unavailable> {
    let seed = (pid << 4) ^ n;
    for step in 0..256 {
        let k = seed.wrapping_add(step * 97) & 0xffff;
        let (a, b) = (u8::try_from(k >> 8).expect("8 bits"), u8::try_from(k & 0xff).expect("8 bits"));
        let prefix = format!("10.{a}.{b}.0/24");
        let routes = Command::new("ip")
            .args(["-4", "-o", "route", "show", "match", &prefix])
            .output()
            .await
            .expect("ip route");
        let overlapping = String::from_utf8_lossy(&routes.stdout)
            .lines()
            .any(|l| !l.trim().is_empty() && !l.starts_with("default"));
        if !overlapping {
            return Ok((a, b));
        }
    }
    Err(Unavailable("no free /24 in 10.0.0.0/8 for the test network".into()))
}

/// Fast liveness on top of the controller's defaults: offline after 4 missed 500 ms heartbeats.
/// Slower than the in-process tests' 200 ms: these are separate processes on a shared machine,
/// and a healthy agent marked offline would fail the very hosts that must succeed.
async fn write_test_config(data: &Path, configure: impl FnOnce(&mut ControllerConfig)) -> ControllerConfig {
    crate::write_test_config(data, Duration::from_millis(500), 4, configure).await
}

async fn log_file(path: &Path) -> Stdio {
    tokio::fs::File::create(path).await.expect("log file").into_std().await.into()
}

/// Runs a command that must succeed; panics with its output otherwise.
async fn run(command: &mut Command) -> std::process::Output {
    let out = command.output().await.expect("spawn");
    assert!(
        out.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn ip(args: &[&str]) {
    run(Command::new("ip").args(args)).await;
}

async fn tc(netns: Option<&str>, args: &[&str]) {
    match netns {
        Some(netns) => run(Command::new("ip").args(["netns", "exec", netns, "tc"]).args(args)).await,
        None => run(Command::new("tc").args(args)).await,
    };
}

async fn netns_exec(netns: &str, program: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .output()
        .await
        .expect("ip netns exec")
}
