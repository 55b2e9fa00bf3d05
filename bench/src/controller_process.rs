//! The controller in a child process (`tailops-bench --controller-process`).
//!
//! With both ends of every connection in one process, the open-file limit caps the fleet at half
//! of what each end could hold, and the controller's memory cannot be told apart from the
//! simulated agents'. In this mode the harness re-executes its own binary as
//! `tailops-bench serve-controller --data-dir D --listen ADDR`: the real controller on a 2-worker
//! runtime (`ctl-rt`) with the lag probe on that runtime, and nothing else in the process.
//!
//! The parent talks to the child over its stdin and stdout, one line each way:
//! - once bound, the child prints `listening ADDR`;
//! - `lag-reset` forgets the lag measured so far and is answered with `ok`;
//! - `lag-report` is answered with the lag percentiles (both probes) as one JSON line;
//! - end of input (the parent closed stdin, or died) stops the controller gracefully, as does
//!   SIGTERM; the child exits once `serve` has returned.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tailops_controller::Controller;
use tailops_controller::data_dir::DataDir;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_util::sync::CancellationToken;

use crate::measure::{Lag, LagProbe};

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "serve-controller";

/// Opening the database and binding (with retries while the old port is released) is quick;
/// this only bounds a child that hangs.
const STARTUP_LIMIT: Duration = Duration::from_secs(60);
/// The child answers from a thread of its own, but its runtime may be busy with a large fan-out.
const REPLY_LIMIT: Duration = Duration::from_secs(30);
/// Closing every agent stream of a large fleet takes a moment; after this the child is killed.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// The parent's handle on a controller running in a child process.
#[derive(Debug)]
pub struct ControllerProcess {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    /// One request and its reply at a time.
    control: tokio::sync::Mutex<ControlPipe>,
}

#[derive(Debug)]
struct ControlPipe {
    requests: ChildStdin,
    replies: Lines<BufReader<ChildStdout>>,
}

impl ControllerProcess {
    /// Starts `binary serve-controller` on an initialised data directory and waits until it
    /// listens on `listen` (port 0: any free port).
    pub async fn spawn(binary: &Path, data_dir: &Path, listen: SocketAddr) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(binary)
            .arg(SUBCOMMAND)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // A harness that fails half-way must not leave a controller behind.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the controller process {}", binary.display()))?;
        let pid = child.id().context("the controller process exited at once")?;
        let requests = child.stdin.take().context("the controller process has no stdin")?;
        let stdout = child.stdout.take().context("the controller process has no stdout")?;
        let mut replies = BufReader::new(stdout).lines();
        let first = match tokio::time::timeout(STARTUP_LIMIT, replies.next_line()).await {
            Ok(line) => line.context("reading the controller process's listen address")?,
            Err(_) => anyhow::bail!("the controller process did not listen within {STARTUP_LIMIT:?}"),
        };
        let Some(first) = first else {
            let status = child.wait().await?;
            anyhow::bail!("the controller process exited before listening ({status})");
        };
        let addr = first
            .strip_prefix("listening ")
            .with_context(|| format!("expected `listening ADDR` from the controller process, got {first:?}"))?
            .parse()
            .with_context(|| format!("the controller process's address in {first:?}"))?;
        Ok(Self { child, pid, addr, control: tokio::sync::Mutex::new(ControlPipe { requests, replies }) })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one command line and returns the reply line.
    async fn request(&self, command: &str) -> anyhow::Result<String> {
        let mut control = self.control.lock().await;
        let sent = async {
            control.requests.write_all(format!("{command}\n").as_bytes()).await?;
            control.requests.flush().await
        };
        sent.await
            .with_context(|| format!("sending {command:?} to the controller process (has it exited?)"))?;
        let reply = tokio::time::timeout(REPLY_LIMIT, control.replies.next_line())
            .await
            .with_context(|| {
                format!("no reply to {command:?} from the controller process within {REPLY_LIMIT:?}")
            })??
            .with_context(|| format!("the controller process exited instead of answering {command:?}"))?;
        if let Some(error) = reply.strip_prefix("error: ") {
            anyhow::bail!("the controller process refused {command:?}: {error}");
        }
        Ok(reply)
    }

    /// Forgets the controller runtime's lag measured so far (to measure one phase).
    pub async fn reset_lag(&self) -> anyhow::Result<()> {
        match self.request("lag-reset").await?.as_str() {
            "ok" => Ok(()),
            other => anyhow::bail!("unexpected reply to lag-reset: {other:?}"),
        }
    }

    /// The controller runtime's lag since the last reset.
    pub async fn lag(&self) -> anyhow::Result<Lag> {
        let reply = self.request("lag-report").await?;
        serde_json::from_str(&reply).with_context(|| format!("lag report {reply:?}"))
    }

    /// Kills the controller with SIGKILL: no shutdown, no flush, as a crash or an OOM kill would.
    pub async fn kill(self) -> anyhow::Result<()> {
        let Self { mut child, .. } = self;
        child.kill().await.context("killing the controller process")?;
        Ok(())
    }

    /// Stops the controller gracefully: closing its stdin makes it cancel its shutdown token and
    /// exit once `serve` has returned (every agent stream closed). Killed if it takes too long.
    pub async fn stop(self) -> anyhow::Result<()> {
        let Self { mut child, control, .. } = self;
        drop(control);
        match tokio::time::timeout(STOP_LIMIT, child.wait()).await {
            Ok(status) => {
                let status = status?;
                anyhow::ensure!(status.success(), "the controller process failed: {status}");
                Ok(())
            }
            Err(_) => {
                child.kill().await?;
                anyhow::bail!("the controller process did not stop within {STOP_LIMIT:?} and was killed")
            }
        }
    }
}

/// The child's side: serves the controller in `data_dir` on `listen` until stdin closes or
/// SIGTERM arrives, answering lag-probe requests on stdin meanwhile.
pub fn serve_controller(data_dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    tailops_pki::install_crypto_provider();
    let runtime = crate::runtime("ctl-rt", 2)?;
    let result = runtime.block_on(serve_and_answer(data_dir, listen));
    // Stopped by SIGTERM, tokio's stdin reader is still blocked in read() on a pool thread;
    // waiting for it would hang until the parent closes the pipe.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve_and_answer(data_dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let controller = Controller::open(&DataDir::new(data_dir)).await?;
    let listener = crate::bind_retrying(&controller, listen).await?;
    let addr = listener.local_addr()?;
    // The probe runs on the runtime's workers, like the controller; this function itself runs on
    // the main thread (block_on), so answering requests does not take a worker.
    let probe = LagProbe::start(&tokio::runtime::Handle::current());
    let shutdown = CancellationToken::new();
    let mut server = tokio::spawn(controller.serve(listener, shutdown.clone()));
    let mut stdout = tokio::io::stdout();
    reply(&mut stdout, &format!("listening {addr}")).await?;

    let mut requests = BufReader::new(tokio::io::stdin()).lines();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let request = tokio::select! {
            request = requests.next_line() => request?,
            _ = terminate.recv() => None,
            served = &mut server => {
                // The controller stopped by itself: report why and exit, the parent sees EOF.
                served??;
                anyhow::bail!("the controller stopped serving on its own");
            }
        };
        let Some(request) = request else { break };
        let answer = match request.trim() {
            "lag-reset" => {
                probe.reset();
                "ok".to_owned()
            }
            "lag-report" => serde_json::to_string(&probe.lag())?,
            other => format!("error: unknown request {other:?}"),
        };
        reply(&mut stdout, &answer).await?;
    }
    shutdown.cancel();
    server.await??;
    Ok(())
}

async fn reply(stdout: &mut tokio::io::Stdout, line: &str) -> anyhow::Result<()> {
    stdout.write_all(format!("{line}\n").as_bytes()).await?;
    // The parent waits for this line: tokio's stdout buffers until flushed.
    stdout.flush().await?;
    Ok(())
}
