//! `net.traceroute`: the route to a host through the host's `traceroute` (one probe per hop,
//! numeric), or `tracepath` when traceroute is not installed.

use std::time::Duration;

use tailops_ops::Validated;
use tailops_proto::v1;

use super::output::{Cell, Table};
use super::{OpError, OpsConfig, tool};

/// One hop: its TTL, who answered (none: no reply) and the round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    pub ttl: u32,
    pub address: Option<String>,
    pub rtt_ms: Option<f64>,
    /// `!H`, `!N`... (traceroute) or `reached` (tracepath).
    pub note: Option<String>,
}

/// Reads hops from a tool's output.
type Parser = fn(&str) -> Vec<Hop>;

pub async fn run(
    op: &Validated,
    config: &OpsConfig,
    timeout: Duration,
) -> Result<v1::OperationOutput, OpError> {
    let host = op.text("host").unwrap_or_default();
    // The tool gets the address the policy checked (not the name, which could resolve anew).
    let address = super::net::checked_address(host, timeout).await?;
    let target = address.as_str();
    let max_hops = op.int("max_hops").unwrap_or(30).to_string();
    let (name, program, args, hops_of): (&str, _, Vec<&str>, Parser) =
        match tool::locate(&config.traceroute, "traceroute").await {
            Ok(program) => (
                "traceroute",
                program,
                vec!["-n", "-q", "1", "-w", "2", "-m", &max_hops, "--", target],
                parse_traceroute,
            ),
            Err(_) => {
                let program = tool::locate(&config.tracepath, "tracepath").await.map_err(|_| {
                    OpError::NotAvailable(
                    "neither traceroute nor tracepath is installed (package traceroute or iputils-tracepath)"
                        .into(),
                )
                })?;
                ("tracepath", program, vec!["-n", "-m", &max_hops, "--", target], parse_tracepath)
            }
        };
    let ran = tool::run(&program, &args, timeout).await?;
    let hops = hops_of(&ran.stdout);
    if hops.is_empty() && !ran.success() {
        return Err(OpError::Failed(format!("{name} {host}: {}", ran.complaint())));
    }
    let mut table = Table::new(&["ttl", "address", "rtt_ms", "note"]);
    for hop in &hops {
        table.row([
            Cell::from(hop.ttl),
            Cell::from(hop.address.clone()),
            Cell::from(hop.rtt_ms),
            Cell::from(hop.note.clone()),
        ]);
    }
    table.step(&[&[name][..], &args[..]].concat());
    let answered = hops.iter().filter(|h| h.address.is_some()).count();
    let last = hops.last().and_then(|h| h.address.as_deref()).unwrap_or("no reply");
    table.summary(format!("{host}: {} hop(s), {answered} answered, last {last}", hops.len()));
    Ok(table.finish())
}

fn rtt(token: &str) -> Option<f64> {
    token.strip_suffix("ms").unwrap_or(token).parse().ok()
}

/// `traceroute -n -q 1`: ` 3  10.0.0.1  5.123 ms` or ` 4  *`, after a header line.
pub fn parse_traceroute(text: &str) -> Vec<Hop> {
    text.lines()
        .filter_map(|line| {
            let mut tokens = line.split_whitespace();
            let ttl = tokens.next()?.parse().ok()?;
            let rest: Vec<&str> = tokens.collect();
            let address = rest.first().filter(|t| **t != "*").map(|t| (*t).to_owned());
            let rtt_ms = rest
                .iter()
                .position(|t| *t == "ms")
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| rtt(rest[i]));
            let note = rest.iter().find(|t| t.starts_with('!')).map(|t| (*t).to_owned());
            Some(Hop { ttl, address, rtt_ms, note })
        })
        .collect()
}

/// `tracepath -n`: ` 1:  192.168.1.1   0.512ms`, ` 2:  no reply`, ` 3:  1.1.1.1  5.2ms reached`;
/// the first line per TTL counts, `[LOCALHOST]` and the resume line do not.
pub fn parse_tracepath(text: &str) -> Vec<Hop> {
    let mut hops: Vec<Hop> = Vec::new();
    for line in text.lines() {
        let Some((ttl, rest)) = line.trim_start().split_once(':') else { continue };
        let Ok(ttl) = ttl.trim_end_matches('?').parse::<u32>() else { continue };
        let rest = rest.trim();
        if rest.starts_with("[LOCALHOST]") || hops.last().is_some_and(|h| h.ttl == ttl) {
            continue;
        }
        let hop = if rest.starts_with("no reply") {
            Hop { ttl, address: None, rtt_ms: None, note: None }
        } else {
            let tokens: Vec<&str> = rest.split_whitespace().collect();
            Hop {
                ttl,
                address: tokens.first().map(|t| (*t).to_owned()),
                rtt_ms: tokens.iter().find(|t| t.ends_with("ms")).and_then(|t| rtt(t)),
                note: tokens.contains(&"reached").then(|| "reached".to_owned()),
            }
        };
        hops.push(hop);
    }
    hops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceroute_output_parses() {
        let text = "traceroute to 1.1.1.1 (1.1.1.1), 30 hops max, 60 byte packets\n 1  192.168.1.1  0.512 ms\n 2  *\n 3  10.20.0.1  5.123 ms !H\n";
        let hops = parse_traceroute(text);
        assert_eq!(hops.len(), 3);
        assert_eq!(
            hops[0],
            Hop { ttl: 1, address: Some("192.168.1.1".into()), rtt_ms: Some(0.512), note: None }
        );
        assert_eq!(hops[1], Hop { ttl: 2, address: None, rtt_ms: None, note: None });
        assert_eq!(hops[2].note.as_deref(), Some("!H"));
    }

    #[test]
    fn tracepath_output_parses() {
        let text = " 1?: [LOCALHOST]                      pmtu 1500\n 1:  192.168.1.1                                           0.512ms \n 1:  192.168.1.1                                           0.400ms \n 2:  no reply\n 3:  1.1.1.1                                               5.2ms reached\n     Resume: pmtu 1500 hops 3 back 3 \n";
        let hops = parse_tracepath(text);
        assert_eq!(hops.len(), 3, "{hops:?}");
        assert_eq!(hops[0].rtt_ms, Some(0.512));
        assert_eq!(hops[1].address, None);
        assert_eq!(hops[2].note.as_deref(), Some("reached"));
    }
}
