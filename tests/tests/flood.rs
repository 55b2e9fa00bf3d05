//! H4 and M3 through the real listener: thousands of unauthenticated TCP connections and
//! half-finished TLS handshakes from several loopback source addresses must neither lock out an
//! agent or an admin nor stay open for ever, and no connection outlives its certificate.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::socket::{MsgFlags, recv};
use tailops_proto::v1::{self, identity_client::IdentityClient};
use tailops_tests::{
    TestController, all_hosts, binary, collect_events, completed, exec_request, mcp_http_bridge, tailopsctl,
    text,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Child;

/// The test process holds both ends of every connection (the controller runs in-process).
fn raise_fd_limit() {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("read the open-file limit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise the open-file limit");
    }
}

/// The start of a TLS ClientHello whose record announces 512 bytes, of which only these arrive:
/// the server's handshake waits for the rest.
const PARTIAL_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, // handshake record, 512 bytes
    0x01, 0x00, 0x01, 0xfc, // ClientHello, 508 bytes
    0x03, 0x03, // TLS 1.2 legacy version
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // the first bytes of the random
];

/// A connection to `target` from `source` (a 127.0.0.x address; Linux routes all of 127/8 to lo).
async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((source, 0))).expect("bind the source address");
    tokio::time::timeout(Duration::from_secs(30), socket.connect(target))
        .await
        .expect("connect did not hang")
        .expect("connect")
}

/// Opens `per_source` connections from each of `sources`; the first `half_tls` of each source
/// send a partial ClientHello, the rest send nothing.
async fn flood(
    target: SocketAddr,
    sources: &[Ipv4Addr],
    per_source: usize,
    half_tls: usize,
) -> Vec<(Ipv4Addr, TcpStream)> {
    let mut streams = Vec::with_capacity(sources.len() * per_source);
    for i in 0..per_source {
        for &source in sources {
            let mut stream = connect_from(source, target).await;
            // The server may already have closed a connection over its limits; that is fine.
            if i < half_tls {
                let _ = stream.write_all(PARTIAL_CLIENT_HELLO).await;
            }
            streams.push((source, stream));
        }
    }
    streams
}

/// Whether the server has closed `stream` (end of file or reset), without waiting.
fn closed_by_server(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match recv(stream.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return true,
            // A TLS alert, say: read on to what follows.
            Ok(_) => continue,
            Err(Errno::EAGAIN) => return false,
            Err(Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

/// Open connections per source, once the server has caught up (it accepts in the background).
async fn open_counts(
    streams: &[(Ipv4Addr, TcpStream)],
    sources: &[Ipv4Addr],
    settled: impl Fn(&[usize]) -> bool,
) -> Vec<usize> {
    let mut counts = Vec::new();
    for _ in 0..120 {
        counts = sources
            .iter()
            .map(|source| streams.iter().filter(|(s, st)| s == source && !closed_by_server(st)).count())
            .collect();
        if settled(&counts) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    counts
}

fn sources(count: u8) -> Vec<Ipv4Addr> {
    (2..2 + count).map(|last| Ipv4Addr::new(127, 0, 0, last)).collect()
}

/// The admin can list hosts through a fresh connection, in-process and through the CLI binary,
/// and the agent `name` is online and runs a job.
async fn fleet_still_works(controller: &TestController, name: &str) {
    let hosts = tokio::time::timeout(
        Duration::from_secs(20),
        controller.fleet().await.list_hosts(v1::ListHostsRequest::default()),
    )
    .await
    .expect("ListHosts answered")
    .expect("ListHosts succeeded")
    .into_inner()
    .hosts;
    assert!(hosts.iter().any(|h| h.name == name && h.online), "the agent lost its stream: {hosts:?}");

    let profile = controller.admin_profile_file().await;
    let listed = tokio::time::timeout(Duration::from_secs(60), tailopsctl(&profile, &["hosts", "ls"]))
        .await
        .expect("tailopsctl hosts ls answered");
    assert!(listed.status.success(), "tailopsctl hosts ls failed: {}", text(&listed.stderr));
    assert!(text(&listed.stdout).contains(name), "{}", text(&listed.stdout));

    let job = controller
        .fleet()
        .await
        .run_job(exec_request(all_hosts(), &["echo", "still here"], Duration::from_secs(20)))
        .await
        .expect("job accepted")
        .into_inner();
    let events = collect_events(job).await;
    assert_eq!(completed(&events).state(), v1::JobState::Succeeded, "{events:?}");
}

/// 3,000 silent connections and half-finished handshakes from ten addresses: each address keeps
/// at most its share, all of them together at most the unauthenticated cap (older ones are closed
/// to make room), and the agent and the admin carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_capped_and_the_fleet_keeps_working() {
    raise_fd_limit();
    // Long timeouts: whatever closes in this test is closed by a cap.
    let controller = TestController::start_with(|config| {
        config.network.tls_handshake_timeout_secs = 300;
        config.network.unauthenticated_timeout_secs = 300;
        config.network.max_unauthenticated_per_address = 100;
        config.network.max_unauthenticated = 400;
    })
    .await;
    let _agent = controller.agent("a1", &[]).await;
    binary("tailopsctl").await;

    let sources = sources(10);
    let streams = flood(controller.addr, &sources, 300, 20).await;
    assert_eq!(streams.len(), 3000);

    let counts = open_counts(&streams, &sources, |counts| {
        counts.iter().all(|&c| c <= 100) && counts.iter().sum::<usize>() <= 400
    })
    .await;
    assert!(counts.iter().all(|&c| c <= 100), "an address kept more than its cap open: {counts:?}");
    assert!(counts.iter().sum::<usize>() <= 400, "more than the unauthenticated cap open: {counts:?}");

    fleet_still_works(&controller, "a1").await;
    drop(streams);
}

/// Silent connections and half-finished handshakes are closed once the handshake and
/// authentication timeouts pass, while an authenticated call in flight on another connection
/// (and the agent's stream that serves it) outlives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_connections_are_closed_after_the_timeouts() {
    raise_fd_limit();
    let controller = TestController::start_with(|config| {
        config.network.tls_handshake_timeout_secs = 2;
        config.network.unauthenticated_timeout_secs = 3;
    })
    .await;
    let _agent = controller.agent("a1", &[]).await;
    binary("tailopsctl").await;

    // An authenticated call that lasts longer than both timeouts.
    let long_job = controller
        .fleet()
        .await
        .run_job(exec_request(all_hosts(), &["sleep", "6"], Duration::from_secs(30)))
        .await
        .expect("job accepted")
        .into_inner();
    let long_job = tokio::spawn(collect_events(long_job));

    let sources = sources(5);
    let streams = flood(controller.addr, &sources, 60, 10).await;
    assert!(streams.iter().any(|(_, s)| !closed_by_server(s)), "the flood was closed before it started");

    // Generous: the timeouts are 2 s and 3 s; this only proves the server did not wait for ever.
    let counts = open_counts(&streams, &sources, |counts| counts.iter().all(|&c| c == 0)).await;
    assert!(counts.iter().all(|&c| c == 0), "connections still open after the timeouts: {counts:?}");

    let events = long_job.await.expect("job stream task");
    assert_eq!(completed(&events).state(), v1::JobState::Succeeded, "the long call was cut: {events:?}");
    fleet_still_works(&controller, "a1").await;
}

/// M3: a connection is closed once the certificate it authenticated with expires, and the
/// client's reconnect, which resumes its TLS session (rustls then restores the certificate
/// without checking its validity again), is refused too.
#[tokio::test]
async fn a_connection_does_not_outlive_its_certificate() {
    let controller = TestController::start_with(|config| {
        config.timing.user_cert_lifetime_secs = 4;
    })
    .await;
    let user = controller.principal("user", "brief", "viewer", None).await;
    let channel = tailopsctl::connect(&user).await.expect("connects while the certificate is valid");
    let mut identity = IdentityClient::new(channel);
    identity.who_am_i(v1::WhoAmIRequest {}).await.expect("WhoAmI while valid");

    let expiry = tailops_pki::CertificateInfo::from_pem(&user.cert_pem).expect("certificate").not_after_ms;
    let wait = u64::try_from(expiry - tailops_proto::time::now_ms()).unwrap_or(0) + 1500;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let late = tokio::time::timeout(Duration::from_secs(20), identity.who_am_i(v1::WhoAmIRequest {}))
        .await
        .expect("the late call did not hang");
    assert!(late.is_err(), "a call on a connection older than its expired certificate succeeded");
}

// ----- L9: the MCP bridge's HTTP listener ------------------------------------------------------

const TOKEN: &str = "flood-test-token-0123456789abcdef";

/// `tailops-mcp --listen 127.0.0.1:0 EXTRA...` for a fresh `mcp` bridge; the child and its address.
async fn http_bridge(controller: &TestController, dir: &Path, extra: &[&str]) -> (Child, SocketAddr) {
    let profile = controller.principal("bridge", "flooded", "mcp", None).await;
    let path = dir.join("flooded.profile.toml");
    profile.save_new(&path).await.expect("save the bridge profile");
    let (child, url) = mcp_http_bridge(&path, extra).await;
    let addr = url.trim_start_matches("http://").trim_end_matches("/mcp").parse().expect("address");
    (child, addr)
}

/// The status code of an `initialize` POST from `source` with the bearer token.
async fn initialize_status(source: Ipv4Addr, addr: SocketAddr) -> u16 {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "flood", "version": "0"}}})
    .to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\nauthorization: Bearer {TOKEN}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = connect_from(source, addr).await;
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut head))
        .await
        .expect("an answer")
        .expect("status line");
    String::from_utf8_lossy(&head[9..12]).parse().expect("status code")
}

/// L9: one address cannot hold more than its share of connections, silent connections and
/// bodies that never finish are closed after their timeouts, and other clients are served.
#[tokio::test]
async fn the_mcp_http_listener_caps_connections_and_times_out_slow_clients() {
    let controller = TestController::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (_bridge, addr) = http_bridge(
        &controller,
        dir.path(),
        &[
            "--token",
            TOKEN,
            "--http-max-connections-per-address",
            "4",
            "--http-header-timeout",
            "1s",
            "--http-body-timeout",
            "2s",
        ],
    )
    .await;
    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let streams = flood(addr, &[flooder], 12, 0).await;
    let counts = open_counts(&streams, &[flooder], |counts| counts[0] <= 4).await;
    assert!(counts[0] <= 4, "one address held {} connections", counts[0]);
    // Another address is served while the flood holds its share.
    assert_eq!(initialize_status(Ipv4Addr::LOCALHOST, addr).await, 200);
    // Silent connections are closed once the header timeout passes (generous bound).
    let counts = open_counts(&streams, &[flooder], |counts| counts[0] == 0).await;
    assert_eq!(counts[0], 0, "silent connections outlived the header timeout");
    drop(streams);

    // A body announced but never sent is cut off after the body timeout (generous bound).
    let mut slow = connect_from(flooder, addr).await;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\nauthorization: Bearer {TOKEN}\r\n\
         content-length: 1000\r\n\r\n{{\"jsonrpc\""
    );
    slow.write_all(head.as_bytes()).await.expect("send the head");
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut answer)).await;
    assert!(ended.is_ok(), "a request body that never arrives held the connection for 30 s");
    // The flood's address is served again once its connections are gone.
    assert_eq!(initialize_status(flooder, addr).await, 200);
}

/// L9: HTTP on loopback without a token is refused unless explicitly allowed.
#[tokio::test]
async fn mcp_http_on_loopback_without_a_token_needs_an_explicit_flag() {
    let controller = TestController::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let profile = controller.principal("bridge", "local", "mcp", None).await;
    let path = dir.path().join("local.profile.toml");
    profile.save_new(&path).await.expect("save the bridge profile");
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(binary("tailops-mcp").await)
            .arg("--profile")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("TAILOPS_MCP_TOKEN")
            .output(),
    )
    .await
    .expect("tailops-mcp exits")
    .expect("run tailops-mcp");
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("without a bearer token"), "{stderr}");
    assert!(stderr.contains("--allow-unauthenticated-loopback"), "{stderr}");

    let (_bridge, addr) = http_bridge(&controller, dir.path(), &["--allow-unauthenticated-loopback"]).await;
    assert!(addr.ip().is_loopback());
}
