//! Logs and the network additions end to end: a real controller, a real agent, the job
//! machinery, lines streamed as the job's stdout.
//!
//! - `log.file` runs for real on temp files, following appends and a rotation.
//! - `log.journal`: journald does not run here (or in CI), so the agent's `journalctl` is a
//!   stand-in that accepts only the exact argv the agent must send (the computed `--since=@...`
//!   through a pattern, its value checked afterwards) and replays `short-iso` lines; the follow
//!   stand-in prints a line every 200 ms until killed, and records its PID so the test can see it
//!   is gone once the job is over.
//! - `net.http` and `net.tls` run for real against loopback servers the test starts: plain HTTP
//!   answered by hand, and a rustls server with a self-signed rcgen certificate.
//! - `net.traceroute`: neither traceroute nor tracepath is installed here, so stand-ins with
//!   exact argv checks replay their output.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tailops_agent::ops::{FilePolicy, OpsConfig};
use tailops_proto::v1;
use tailops_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// Runs an operation with its own deadline; returns its final state, result and streamed stdout.
async fn run_timed(
    controller: &TestController,
    host: &str,
    name: &str,
    params: &[(&str, &str)],
    timeout_ms: u64,
) -> (v1::TargetState, v1::CommandResult, String) {
    run_request(
        controller,
        host,
        op_request_with(host, name, params, false, Duration::from_millis(timeout_ms)),
    )
    .await
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

#[tokio::test]
async fn log_files_are_tailed_and_followed_through_a_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("log");
    tokio::fs::create_dir_all(&base).await.expect("mkdir");
    let base = base.canonicalize().expect("canonical");
    let log = base.join("app.log");
    let lines: String = (1..=500).map(|i| format!("event {i}\n")).collect();
    tokio::fs::write(&log, &lines).await.expect("write");
    let outside = dir.path().join("elsewhere.log");
    tokio::fs::write(&outside, "secret\n").await.expect("write");

    let controller = TestController::start().await;
    let ops = OpsConfig {
        files: FilePolicy { observe_roots: vec![base.clone()], base_dirs: vec![base.clone()], deny: vec![] },
        ..OpsConfig::default()
    };
    let _agent = controller.agent_with("logs", &[], None, ops).await;
    let path = log.display().to_string();

    let (state, result, stdout) =
        run_timed(&controller, "logs", "log.file", &[("path", &path), ("lines", "3")], 20_000).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let got: Vec<String> = op_output(&result).records.iter().map(|r| field(r, "line")).collect();
    assert_eq!(got, ["event 498", "event 499", "event 500"]);
    assert!(stdout.is_empty(), "nothing streams without follow: {stdout:?}");

    let (state, result, _) =
        run_timed(&controller, "logs", "log.file", &[("path", &outside.display().to_string())], 20_000).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.error.starts_with("refused:") && result.error.contains("outside"), "{}", result.error);

    // Follow for 3 s: once the first lines arrive, append three, rotate the file, and write two
    // more to the new one.
    let mut stream = controller
        .fleet()
        .await
        .run_job(op_request_with(
            "logs",
            "log.file",
            &[("path", &path), ("lines", "2"), ("follow", "true")],
            false,
            Duration::from_secs(3),
        ))
        .await
        .expect("accepted")
        .into_inner();
    let mut events = Vec::new();
    let mut writer = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("stalled")
        .expect("stream")
    {
        if writer.is_none() && matches!(event.kind, Some(v1::job_event::Kind::Output(_))) {
            let log = log.clone();
            writer = Some(tokio::spawn(async move {
                for i in 1..=3 {
                    let mut f = tokio::fs::OpenOptions::new().append(true).open(&log).await.expect("open");
                    f.write_all(format!("appended {i}\n").as_bytes()).await.expect("append");
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                tokio::fs::rename(&log, log.with_extension("log.1")).await.expect("rotate");
                tokio::fs::write(&log, "rotated 1\n").await.expect("new file");
                tokio::time::sleep(Duration::from_millis(400)).await;
                let mut f = tokio::fs::OpenOptions::new().append(true).open(&log).await.expect("open");
                // Written in two pieces: the line streams once it is complete.
                f.write_all(b"rotated").await.expect("append");
                f.flush().await.expect("flush");
                tokio::time::sleep(Duration::from_millis(300)).await;
                f.write_all(b" 2\n").await.expect("append");
            }));
        }
        events.push(event);
    }
    writer.expect("lines streamed").await.expect("writer");
    let stdout = output_of(&events, "logs", v1::OutputStream::Stdout);
    assert_eq!(stdout, "event 499\nevent 500\nappended 1\nappended 2\nappended 3\nrotated 1\nrotated 2\n");
    let finished = finished_by_host(&events).remove("logs").expect("a result");
    assert_eq!(finished.state(), v1::TargetState::Succeeded);
    let result = finished.result.unwrap_or_default();
    let summary = op_output(&result).summary;
    assert!(summary.contains("7 line(s) streamed until the job's deadline"), "{summary}");
    assert!(summary.contains("rotated 1 time(s)"), "{summary}");
    controller.stop().await;
}

/// Representative `journalctl --output=short-iso` lines (journald does not run here to capture
/// from; the format is systemd's: ISO time, host, identifier[pid], message).
const JOURNAL: &str = "\
2026-11-27T01:58:03+0000 web1 nginx[812]: 2026/11/27 01:58:03 [error] 812#812: *1 connect() failed (111: Connection refused) while connecting to upstream
2026-11-27T01:58:04+0000 web1 systemd[1]: nginx.service: Main process exited, code=exited, status=1/FAILURE
2026-11-27T01:58:04+0000 web1 systemd[1]: nginx.service: Failed with result 'exit-code'.
";

#[tokio::test]
async fn the_journal_is_queried_and_followed_and_the_follower_dies_with_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let calls = dir.path().join("calls.log");
    let pid_file = dir.path().join("follower.pid");
    let body = format!(
        r#"#!/bin/sh
echo "$*" >> '{calls}'
case "$*" in
  "--no-pager --output=short-iso --unit=nginx.service --since=@"*" --priority=err --grep=connect|exit --lines=50")
    cat <<'EOF'
{journal}EOF
    ;;
  "--no-pager --output=short-iso --follow --lines=10")
    echo $$ > '{pid}'
    i=0
    while :; do
      i=$((i+1))
      echo "2026-11-27T02:00:00+0000 web1 app[42]: tick $i"
      sleep 0.2
    done
    ;;
  *) echo "unexpected argv: $*" >&2; exit 64 ;;
esac
"#,
        calls = calls.display(),
        journal = JOURNAL,
        pid = pid_file.display(),
    );
    let journalctl = stand_in(&dir.path().join("journalctl"), &body).await;
    let controller = TestController::start().await;
    let _agent =
        controller.agent_with("j", &[], None, OpsConfig { journalctl, ..OpsConfig::default() }).await;
    let _bare = controller
        .agent_with(
            "bare",
            &[],
            None,
            OpsConfig { journalctl: "/nonexistent/journalctl".into(), ..OpsConfig::default() },
        )
        .await;

    let params = [
        ("unit", "nginx.service"),
        ("since", "1h"),
        ("priority", "err"),
        ("grep", "connect|exit"),
        ("lines", "50"),
    ];
    let before = now();
    let (state, result, _) = run_timed(&controller, "j", "log.journal", &params, 20_000).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    assert_eq!(out.records.len(), 3);
    assert_eq!(field(&out.records[0], "identifier"), "nginx");
    assert_eq!(field(&out.records[0], "pid"), "812");
    assert_eq!(field(&out.records[1], "time"), "2026-11-27T01:58:04+0000");
    assert!(field(&out.records[1], "message").starts_with("nginx.service: Main process exited"));
    assert_eq!(out.summary, "3 journal entries of nginx.service");
    // `since=1h` became an absolute time an hour before the call.
    let logged = tokio::fs::read_to_string(&calls).await.expect("calls");
    let since: u64 = logged
        .split_whitespace()
        .find_map(|a| a.strip_prefix("--since=@"))
        .and_then(|s| s.parse().ok())
        .expect("--since=@SECS");
    assert!((before - 3600..=now() - 3600).contains(&since), "since {since}, now {}", now());

    // Follow under a 3 s job: lines stream in order, the result says how many, and the
    // follower is gone once the job is over.
    let (state, result, stdout) =
        run_timed(&controller, "j", "log.journal", &[("follow", "true"), ("lines", "10")], 3_000).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let ticks: Vec<&str> = stdout.lines().collect();
    assert!(ticks.len() >= 5, "{stdout}");
    for (i, line) in ticks.iter().enumerate() {
        assert_eq!(*line, format!("2026-11-27T02:00:00+0000 web1 app[42]: tick {}", i + 1));
    }
    let summary = op_output(&result).summary;
    assert!(
        summary.contains(&format!("{} line(s) streamed until the job's deadline", ticks.len())),
        "{summary}"
    );
    let pid: i32 = tokio::fs::read_to_string(&pid_file).await.expect("pid").trim().parse().expect("pid");
    assert!(!process_alive(pid).await, "journalctl --follow ({pid}) outlived its job");

    let (state, result, _) = run_timed(&controller, "bare", "log.journal", &[], 20_000).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.not_available, "{}", result.error);
    assert!(result.error.contains("journalctl"), "{}", result.error);
    controller.stop().await;
}

/// A plain HTTP server on loopback answering by path; every request's path is recorded.
async fn http_server() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                log.lock().expect("lock").push(path.clone());
                let redirect = |to: &str| {
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                };
                let response = match path.as_str() {
                    "/ok" => "HTTP/1.1 200 OK\r\nServer: test-server/1.0\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_owned(),
                    "/meta" => redirect("http://169.254.169.254/latest/meta-data/"),
                    "/r1" => redirect("/r2"),
                    "/r2" => redirect(&format!("http://127.0.0.1:{port}/ok")),
                    "/loop" => redirect("/loop"),
                    _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                };
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (port, seen)
}

/// A TLS server on loopback with a self-signed certificate for `localhost`, on a thread
/// (blocking rustls over std sockets; the test crate has rustls but not tokio-rustls).
async fn tls_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let listener = listener.into_std().expect("std");
    listener.set_nonblocking(false).expect("blocking");
    let signed = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signed.signing_key.serialize_der().into());
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![signed.cert.der().clone()], key)
            .expect("server config");
    let config = Arc::new(config);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(server) = rustls::ServerConnection::new(config) else { return };
                let mut tls = rustls::StreamOwned::new(server, conn);
                let mut buf = [0u8; 4096];
                if tls.read(&mut buf).is_ok() {
                    let _ =
                        tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn http_requests_follow_checked_redirects_and_tls_reports_unverified_certificates() {
    let (port, seen) = http_server().await;
    let tls_port = tls_server().await;
    let controller = TestController::start().await;
    let _agent = controller.agent_with("web", &[], None, OpsConfig::default()).await;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    let (state, result, _) = run_timed(&controller, "web", "net.http", &[("url", &url("/ok"))], 20_000).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    assert_eq!(out.records.len(), 1);
    let hop = &out.records[0];
    assert_eq!(field(hop, "status"), "200");
    assert_eq!(field(hop, "server"), "test-server/1.0");
    assert_eq!(field(hop, "content_length"), "5");
    assert_eq!(field(hop, "address"), format!("127.0.0.1:{port}"));
    for timing in ["dns_ms", "connect_ms", "first_byte_ms", "total_ms"] {
        assert!(field(hop, timing).parse::<f64>().is_ok_and(|ms| ms >= 0.0), "{timing}: {hop:?}");
    }
    assert!(out.summary.starts_with(&format!("GET {}: 200 in ", url("/ok"))), "{}", out.summary);

    // Two redirects, one relative and one absolute, are followed to the end.
    let (state, result, _) = run_timed(&controller, "web", "net.http", &[("url", &url("/r1"))], 20_000).await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    let chain: Vec<(String, String)> =
        out.records.iter().map(|r| (field(r, "url"), field(r, "status"))).collect();
    assert_eq!(
        chain,
        [(url("/r1"), "302".to_owned()), (url("/r2"), "302".to_owned()), (url("/ok"), "200".to_owned())]
    );
    assert!(
        out.summary.contains(&format!("after 2 redirect(s), final URL {}", url("/ok"))),
        "{}",
        out.summary
    );

    // HEAD asks for the head only.
    let (_, result, _) =
        run_timed(&controller, "web", "net.http", &[("url", &url("/ok")), ("method", "HEAD")], 20_000).await;
    assert!(op_output(&result).summary.starts_with("HEAD "), "{}", op_output(&result).summary);

    // A redirect to the cloud metadata service is refused, before any connection to it.
    let (state, result, _) =
        run_timed(&controller, "web", "net.http", &[("url", &url("/meta"))], 20_000).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(
        result.error.starts_with("refused: redirect to http://169.254.169.254/latest/meta-data/"),
        "{}",
        result.error
    );
    assert!(result.error.contains("link-local"), "{}", result.error);
    assert!(result.output.is_none());

    // And a literal link-local target is refused the same way.
    let (state, result, _) = run_timed(
        &controller,
        "web",
        "net.http",
        &[("url", "http://169.254.169.254/latest/meta-data/")],
        20_000,
    )
    .await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.error.starts_with("refused:") && result.error.contains("link-local"), "{}", result.error);

    let (state, result, _) =
        run_timed(&controller, "web", "net.http", &[("url", &url("/loop"))], 20_000).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(result.error.contains("more than 5 redirects"), "{}", result.error);
    let requested = seen.lock().expect("lock").clone();
    assert_eq!(requested.iter().filter(|p| *p == "/loop").count(), 6, "{requested:?}");

    // https against a self-signed certificate: the request fails verification...
    let https = format!("https://localhost:{tls_port}/");
    let (state, result, _) = run_timed(&controller, "web", "net.http", &[("url", &https)], 20_000).await;
    assert_eq!(state, v1::TargetState::Failed);
    assert!(
        result.error.contains("TLS handshake with localhost")
            && result.error.contains("invalid peer certificate"),
        "{}",
        result.error
    );

    // ...and net.tls still reports the certificate, unverified.
    let port_text = tls_port.to_string();
    let (state, result, _) =
        run_timed(&controller, "web", "net.tls", &[("host", "localhost"), ("port", &port_text)], 20_000)
            .await;
    assert_eq!(state, v1::TargetState::Succeeded, "{}", result.error);
    let out = op_output(&result);
    let cert = &out.records[0];
    assert_eq!(field(cert, "verified"), "false");
    assert!(field(cert, "verify_error").contains("invalid peer certificate"), "{cert:?}");
    assert_eq!(field(cert, "sans"), "localhost");
    assert_eq!(field(cert, "subject"), field(cert, "issuer"), "self-signed");
    assert!(field(cert, "subject").contains("rcgen"), "{cert:?}");
    assert!(field(cert, "days_left").parse::<i64>().is_ok_and(|d| d > 365), "{cert:?}");
    assert!(!field(cert, "not_after").is_empty() && !field(cert, "protocol").is_empty(), "{cert:?}");
    assert!(out.summary.contains("UNVERIFIED certificate for localhost"), "{}", out.summary);
    controller.stop().await;
}

/// Output of `traceroute -n -q 1 -w 2 -m 5 -- 192.0.2.1` (traceroute 2.1.x on Debian): the
/// documentation address never answers, so the last hops are stars.
const TRACEROUTE: &str = "traceroute to 192.0.2.1 (192.0.2.1), 5 hops max, 60 byte packets
 1  172.17.0.1  0.071 ms
 2  10.128.0.1  1.204 ms
 3  *
 4  *
 5  *
";

/// Output of `tracepath -n -m 5 -- 192.0.2.1` (iputils).
const TRACEPATH: &str = " 1?: [LOCALHOST]                      pmtu 1500
 1:  172.17.0.1                                            0.088ms 
 1:  172.17.0.1                                            0.052ms 
 2:  10.128.0.1                                            1.311ms 
 3:  no reply
 4:  no reply
 5:  no reply
     Too many hops: pmtu 1500
     Resume: pmtu 1500 
";

#[tokio::test]
async fn traceroute_or_tracepath_and_refusals_before_a_job_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replay = |argv: &str, out: &str| {
        format!(
            "#!/bin/sh\ncase \"$*\" in\n  \"{argv}\") cat <<'EOF'\n{out}EOF\n    ;;\n  *) echo \"unexpected argv: $*\" >&2; exit 64 ;;\nesac\n"
        )
    };
    let traceroute =
        stand_in(&dir.path().join("traceroute"), &replay("-n -q 1 -w 2 -m 5 -- 192.0.2.1", TRACEROUTE)).await;
    let tracepath = stand_in(&dir.path().join("tracepath"), &replay("-n -m 5 -- 192.0.2.1", TRACEPATH)).await;
    let controller = TestController::start().await;
    let _tr = controller.agent_with("tr", &[], None, OpsConfig { traceroute, ..OpsConfig::default() }).await;
    let _tp = controller
        .agent_with(
            "tp",
            &[],
            None,
            OpsConfig { traceroute: "/nonexistent/traceroute".into(), tracepath, ..OpsConfig::default() },
        )
        .await;

    for host in ["tr", "tp"] {
        let (state, result, _) = run_timed(
            &controller,
            host,
            "net.traceroute",
            &[("host", "192.0.2.1"), ("max_hops", "5")],
            20_000,
        )
        .await;
        assert_eq!(state, v1::TargetState::Succeeded, "{host}: {}", result.error);
        let out = op_output(&result);
        let hops: Vec<(String, String)> =
            out.records.iter().map(|r| (field(r, "ttl"), field(r, "address"))).collect();
        assert_eq!(
            hops,
            [("1", "172.17.0.1"), ("2", "10.128.0.1"), ("3", ""), ("4", ""), ("5", "")]
                .map(|(t, a)| (t.to_owned(), a.to_owned())),
            "{host}"
        );
        assert!(field(&out.records[1], "rtt_ms").starts_with("1."), "{host}: {:?}", out.records[1]);
        assert_eq!(out.summary, "192.0.2.1: 5 hop(s), 2 answered, last no reply", "{host}");
    }

    let mut fleet = controller.fleet().await;
    for (name, params) in [
        ("net.http", vec![("url", "file:///etc/passwd")]),
        ("net.http", vec![("url", "http://user:pw@example.com/")]),
        ("net.http", vec![("url", "http://example.com/"), ("method", "POST")]),
        ("log.journal", vec![("unit", "--all")]),
        ("log.journal", vec![("priority", "verbose")]),
        ("log.journal", vec![("since", "1000d")]),
        ("log.file", vec![("path", "relative.log")]),
        ("net.tls", vec![("host", "-oProxyCommand=sh")]),
        ("net.traceroute", vec![("host", "--help")]),
    ] {
        let err = fleet
            .run_job(op_request_with("tr", name, &params, false, Duration::from_millis(20_000)))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{name} {params:?}: {}", err.message());
    }
    let jobs = fleet.list_jobs(v1::ListJobsRequest { limit: 50 }).await.expect("jobs").into_inner().jobs;
    assert_eq!(jobs.len(), 2, "only the two traceroutes became jobs");
    controller.stop().await;
}
