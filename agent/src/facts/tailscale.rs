//! `tailscale.{backend_state,dns_name,addresses,tags,online_peers}` and `capability.tailscale`
//! from `tailscale status --json`, when the CLI is installed and answers. A node that has not
//! logged in has no `Self`, so only its backend state and peer count (0); `tags` is absent
//! for an untagged node.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{Facts, command, insert, list};

const ARGS: &[&str] = &["status", "--json"];

pub(super) async fn collect(program: &Path, timeout: Duration) -> Facts {
    match command::run(program, ARGS, timeout).await {
        Some(output) => parse(&output),
        None => Facts::new(),
    }
}

/// The part of `ipnstate.Status` used here; everything else in the output is ignored.
#[derive(Debug, Deserialize)]
struct Status {
    #[serde(rename = "BackendState", default)]
    backend_state: String,
    /// Absent (or null) before the node has logged in.
    #[serde(rename = "Self")]
    this: Option<PeerStatus>,
    /// Keyed by node key; null when the tailnet has no other nodes.
    #[serde(rename = "Peer", default)]
    peers: Option<BTreeMap<String, PeerStatus>>,
}

#[derive(Debug, Deserialize)]
struct PeerStatus {
    #[serde(rename = "DNSName", default)]
    dns_name: String,
    #[serde(rename = "TailscaleIPs", default)]
    tailscale_ips: Option<Vec<String>>,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Online", default)]
    online: bool,
}

fn parse(output: &str) -> Facts {
    let mut facts = Facts::new();
    let status: Status = match serde_json::from_str(output) {
        Ok(status) => status,
        Err(e) => {
            tracing::debug!(error = %e, "unexpected `tailscale status --json` output");
            return facts;
        }
    };
    insert(&mut facts, "capability.tailscale", "yes");
    insert(&mut facts, "tailscale.backend_state", status.backend_state);
    if let Some(this) = status.this {
        insert(&mut facts, "tailscale.dns_name", this.dns_name.trim_end_matches('.'));
        insert(&mut facts, "tailscale.addresses", list(this.tailscale_ips.unwrap_or_default()));
        insert(&mut facts, "tailscale.tags", list(this.tags.unwrap_or_default()));
    }
    let online = status.peers.unwrap_or_default().values().filter(|peer| peer.online).count();
    insert(&mut facts, "tailscale.online_peers", online.to_string());
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testutil::fake_program;

    /// Modelled on `tailscale status --json` from tailscale 1.76 on Linux (keys shortened,
    /// fields kept in their real shapes, including ones this module ignores).
    const STATUS: &str = r#"{
  "Version": "1.76.6-tb2a8f9c5e-g6f2f1a0f3",
  "TUN": true,
  "BackendState": "Running",
  "HaveNodeKey": true,
  "AuthURL": "",
  "TailscaleIPs": ["100.101.102.103", "fd7a:115c:a1e0::8a01:6667"],
  "Self": {
    "ID": "nQ4Ey5CNTRL",
    "PublicKey": "nodekey:5c1f0e8e6a0b2f44c1b7e9d3a8f6c2e1d0b9a8f7e6d5c4b3a2918f7e6d5c4b3a",
    "HostName": "pve-node1",
    "DNSName": "pve-node1.tail4c1e2.ts.net.",
    "OS": "linux",
    "UserID": 6543210987654321,
    "TailscaleIPs": ["100.101.102.103", "fd7a:115c:a1e0::8a01:6667"],
    "AllowedIPs": ["100.101.102.103/32", "fd7a:115c:a1e0::8a01:6667/128"],
    "Tags": ["tag:server", "tag:homelab"],
    "Addrs": ["203.0.113.7:41641", "192.168.1.20:41641"],
    "CurAddr": "",
    "Relay": "fra",
    "RxBytes": 0,
    "TxBytes": 0,
    "Created": "2024-03-11T09:12:44.123456789Z",
    "LastWrite": "0001-01-01T00:00:00Z",
    "LastSeen": "0001-01-01T00:00:00Z",
    "LastHandshake": "0001-01-01T00:00:00Z",
    "Online": true,
    "ExitNode": false,
    "ExitNodeOption": false,
    "Active": false,
    "PeerAPIURL": ["http://100.101.102.103:44201", "http://[fd7a:115c:a1e0::8a01:6667]:44201"],
    "Capabilities": ["https://tailscale.com/cap/file-sharing", "https://tailscale.com/cap/ssh"],
    "CapMap": {"https://tailscale.com/cap/ssh": null},
    "InNetworkMap": true,
    "InMagicSock": false,
    "InEngine": false
  },
  "Health": [],
  "MagicDNSSuffix": "tail4c1e2.ts.net",
  "CurrentTailnet": {"Name": "ops@example.com", "MagicDNSSuffix": "tail4c1e2.ts.net", "MagicDNSEnabled": true},
  "CertDomains": ["pve-node1.tail4c1e2.ts.net"],
  "Peer": {
    "nodekey:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9": {
      "ID": "nR7Tz2CNTRL",
      "HostName": "laptop",
      "DNSName": "laptop.tail4c1e2.ts.net.",
      "OS": "macOS",
      "TailscaleIPs": ["100.88.1.2", "fd7a:115c:a1e0::1f01:102"],
      "Tags": null,
      "Relay": "fra",
      "Online": true,
      "Active": true,
      "LastSeen": "2024-11-02T18:01:12Z"
    },
    "nodekey:1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a": {
      "ID": "nS8Ua3CNTRL",
      "HostName": "nas",
      "DNSName": "nas.tail4c1e2.ts.net.",
      "OS": "linux",
      "TailscaleIPs": ["100.88.1.3"],
      "Tags": ["tag:server"],
      "Online": true,
      "Active": false
    },
    "nodekey:2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b": {
      "ID": "nT9Vb4CNTRL",
      "HostName": "phone",
      "DNSName": "phone.tail4c1e2.ts.net.",
      "OS": "android",
      "TailscaleIPs": ["100.88.1.4"],
      "Online": false,
      "Active": false,
      "LastSeen": "2024-10-30T07:45:00Z"
    }
  },
  "User": {"6543210987654321": {"ID": 6543210987654321, "LoginName": "ops@example.com", "DisplayName": "Ops"}},
  "ClientVersion": {"RunningLatest": true}
}
"#;

    fn expected() -> Facts {
        [
            ("capability.tailscale", "yes"),
            ("tailscale.addresses", "100.101.102.103,fd7a:115c:a1e0::8a01:6667"),
            ("tailscale.backend_state", "Running"),
            ("tailscale.dns_name", "pve-node1.tail4c1e2.ts.net"),
            ("tailscale.online_peers", "2"),
            ("tailscale.tags", "tag:homelab,tag:server"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn parses_status() {
        assert_eq!(parse(STATUS), expected());
    }

    #[test]
    fn logged_out_node() {
        let facts =
            parse(r#"{"Version": "1.76.6", "BackendState": "NeedsLogin", "Self": null, "Peer": null}"#);
        let keys: Vec<&str> = facts.keys().map(String::as_str).collect();
        assert_eq!(keys, ["capability.tailscale", "tailscale.backend_state", "tailscale.online_peers"]);
        assert_eq!(facts["tailscale.backend_state"], "NeedsLogin");
        assert_eq!(facts["tailscale.online_peers"], "0");
        assert!(parse("tailscaled is not running").is_empty());
    }

    #[tokio::test]
    async fn runs_the_configured_cli_with_the_exact_arguments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cli = fake_program(dir.path(), "tailscale", ARGS, STATUS).await;
        assert_eq!(collect(&cli, Duration::from_secs(10)).await, expected());

        // The same output behind other arguments is not what `collect` asks for.
        let wrong = fake_program(dir.path(), "tailscale-old", &["status", "--json", "--peers"], STATUS).await;
        assert!(collect(&wrong, Duration::from_secs(10)).await.is_empty());
    }
}
