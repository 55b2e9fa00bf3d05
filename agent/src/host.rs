//! What the agent reports about its host in `Hello`. Nothing here may fail the connection:
//! whatever cannot be read is reported empty.

use tailops_proto::v1;

/// The hello for a session, saying which jobs run now (they go on across reconnects).
pub async fn hello(running_jobs: Vec<u64>) -> v1::Hello {
    v1::Hello {
        running_jobs,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname: hostname(),
        os: os_name().await,
        arch: std::env::consts::ARCH.to_owned(),
        kernel: read_trimmed("/proc/sys/kernel/osrelease").await,
        clock_ms: tailops_proto::time::now_ms(),
    }
}

/// The machine's host name, the default agent name.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

async fn os_name() -> String {
    let release = read_trimmed("/etc/os-release").await;
    release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| std::env::consts::OS.to_owned())
}

async fn read_trimmed(path: &str) -> String {
    tokio::fs::read_to_string(path).await.map(|s| s.trim().to_owned()).unwrap_or_default()
}
