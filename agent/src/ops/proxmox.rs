//! Proxmox VE guests through `pct` (LXC) and `qm` (VMs). A guest id is looked up in the host's
//! own lists first, which says both that it exists and which tool manages it; snapshots are
//! checked the same way before a rollback.

use std::time::Duration;

use tailops_ops::Validated;
use tailops_proto::v1;

use super::output::{Cell, Table};
use super::tool;
use super::{OpError, OpsConfig};

/// A guest as the host lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Guest {
    kind: Kind,
    vmid: u64,
    name: String,
    status: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Container,
    Vm,
}

impl Kind {
    fn tool(self) -> &'static str {
        match self {
            Self::Container => "pct",
            Self::Vm => "qm",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Container => "ct",
            Self::Vm => "vm",
        }
    }
}

struct Tools {
    pct: Option<std::path::PathBuf>,
    qm: Option<std::path::PathBuf>,
    timeout: Duration,
}

impl Tools {
    async fn locate(config: &OpsConfig, timeout: Duration) -> Result<Self, OpError> {
        let pct = tool::locate(&config.pct, "pct").await.ok();
        let qm = tool::locate(&config.qm, "qm").await.ok();
        if pct.is_none() && qm.is_none() {
            return Err(OpError::NotAvailable(
                "this is not a Proxmox VE host (neither pct nor qm is installed)".into(),
            ));
        }
        Ok(Self { pct, qm, timeout })
    }

    fn path(&self, kind: Kind) -> Option<&std::path::Path> {
        match kind {
            Kind::Container => self.pct.as_deref(),
            Kind::Vm => self.qm.as_deref(),
        }
    }

    /// Runs `<pct|qm> args`, failing with the tool's complaint.
    async fn run(&self, kind: Kind, args: &[&str]) -> Result<String, OpError> {
        let path = self
            .path(kind)
            .ok_or_else(|| OpError::NotAvailable(format!("{} is not installed", kind.tool())))?;
        let ran = tool::run(path, args, self.timeout).await?;
        if !ran.success() {
            return Err(OpError::Failed(format!("{} {}: {}", kind.tool(), args.join(" "), ran.complaint())));
        }
        Ok(ran.stdout)
    }

    async fn guests(&self) -> Result<Vec<Guest>, OpError> {
        let mut guests = Vec::new();
        if self.pct.is_some() {
            guests.extend(parse_pct_list(&self.run(Kind::Container, &["list"]).await?));
        }
        if self.qm.is_some() {
            guests.extend(parse_qm_list(&self.run(Kind::Vm, &["list"]).await?));
        }
        guests.sort_by_key(|g| g.vmid);
        Ok(guests)
    }

    /// The guest with `vmid`, or a refusal naming what exists.
    async fn guest(&self, vmid: u64) -> Result<Guest, OpError> {
        self.guests().await?.into_iter().find(|g| g.vmid == vmid).ok_or_else(|| {
            OpError::Refused(format!("no container or VM {vmid} on this host; `proxmox.list` shows them"))
        })
    }
}

pub async fn run(
    op: &Validated,
    config: &OpsConfig,
    timeout: Duration,
) -> Result<v1::OperationOutput, OpError> {
    let tools = Tools::locate(config, timeout).await?;
    let vmid = op.int("vmid").and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let id = vmid.to_string();
    match op.spec.name {
        "proxmox.list" => {
            let guests = tools.guests().await?;
            let mut table = Table::new(&["vmid", "kind", "name", "status"]);
            for g in &guests {
                table.row([
                    Cell::from(g.vmid),
                    Cell::from(g.kind.name()),
                    Cell::from(g.name.clone()),
                    Cell::from(g.status.clone()),
                ]);
            }
            table.summary(format!("{} guest(s)", guests.len()));
            Ok(table.finish())
        }
        "proxmox.snapshots" => {
            let guest = tools.guest(vmid).await?;
            let snapshots = parse_snapshots(&tools.run(guest.kind, &["listsnapshot", &id]).await?);
            let mut table = Table::new(&["snapshot", "taken", "description"]);
            for s in &snapshots {
                table.row([Cell::from(s.0.clone()), Cell::from(s.1.clone()), Cell::from(s.2.clone())]);
            }
            table.step(&[guest.kind.tool(), "listsnapshot", &id]);
            table.summary(format!(
                "{} snapshot(s) of {} {vmid} ({})",
                snapshots.len(),
                guest.kind.name(),
                guest.name
            ));
            Ok(table.finish())
        }
        name => {
            let guest = tools.guest(vmid).await?;
            let snapshot = op.text("snapshot").unwrap_or_default();
            let argv: Vec<&str> = match name {
                "proxmox.start" => vec!["start", &id],
                "proxmox.stop" => vec!["stop", &id],
                "proxmox.shutdown" => vec!["shutdown", &id],
                "proxmox.reboot" => vec!["reboot", &id],
                "proxmox.snapshot" => vec!["snapshot", &id, snapshot],
                "proxmox.rollback" => {
                    let known = parse_snapshots(&tools.run(guest.kind, &["listsnapshot", &id]).await?);
                    if !known.iter().any(|s| s.0 == snapshot) {
                        return Err(OpError::Refused(format!(
                            "{} {vmid} has no snapshot {snapshot:?}; `proxmox.snapshots` lists them",
                            guest.kind.name()
                        )));
                    }
                    vec!["rollback", &id, snapshot]
                }
                other => {
                    return Err(OpError::NotAvailable(format!("{other} is not implemented by this agent")));
                }
            };
            let shown: Vec<&str> = std::iter::once(guest.kind.tool()).chain(argv.iter().copied()).collect();
            let mut table = Table::new(&["vmid", "kind", "name", "status"]);
            table.step(&shown);
            if op.dry_run {
                table.summary(format!(
                    "would run: {} ({} {vmid} {} is {})",
                    shown.join(" "),
                    guest.kind.name(),
                    guest.name,
                    guest.status
                ));
                return Ok(table.finish());
            }
            tools.run(guest.kind, &argv).await?;
            let after = tools.guest(vmid).await?;
            table.row([
                Cell::from(after.vmid),
                Cell::from(after.kind.name()),
                Cell::from(after.name.clone()),
                Cell::from(after.status.clone()),
            ]);
            table.summary(format!(
                "{}: {} {vmid} ({}) is {}",
                argv[0],
                after.kind.name(),
                after.name,
                after.status
            ));
            Ok(table.finish())
        }
    }
}

/// `pct list`: `VMID Status Lock Name`, where Lock is often empty.
fn parse_pct_list(text: &str) -> Vec<Guest> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let vmid = fields.first()?.parse().ok()?;
            let status = (*fields.get(1)?).to_owned();
            let name =
                fields.last().filter(|_| fields.len() >= 3).map_or_else(String::new, |n| (*n).to_owned());
            Some(Guest { kind: Kind::Container, vmid, name, status })
        })
        .collect()
}

/// `qm list`: `VMID NAME STATUS MEM(MB) BOOTDISK(GB) PID`.
fn parse_qm_list(text: &str) -> Vec<Guest> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let vmid = fields.first()?.parse().ok()?;
            Some(Guest {
                kind: Kind::Vm,
                vmid,
                name: (*fields.get(1)?).to_owned(),
                status: (*fields.get(2)?).to_owned(),
            })
        })
        .collect()
}

/// `pct|qm listsnapshot`: a tree of `` `-> NAME  DATE TIME  DESCRIPTION `` lines ending in the
/// pseudo-snapshot `current`.
fn parse_snapshots(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|line| line.split_once("`->").map(|(_, rest)| rest.trim()))
        .filter_map(|rest| {
            let mut fields = rest.split_whitespace();
            let name = fields.next()?.to_owned();
            if name == "current" {
                return None;
            }
            let rest: Vec<&str> = fields.collect();
            let (taken, description) = if rest.len() >= 2 && rest[0].contains('-') && rest[1].contains(':') {
                (format!("{} {}", rest[0], rest[1]), rest[2..].join(" "))
            } else {
                (String::new(), rest.join(" "))
            };
            Some((name, taken, description))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from Proxmox VE 8.2.
    const PCT_LIST: &str = "\
VMID       Status     Lock         Name
100        running                 pihole
101        stopped    backup       test-ct
";
    const QM_LIST: &str = "      VMID NAME                 STATUS     MEM(MB)    BOOTDISK(GB) PID
       200 win11                running    8192              64.00 12345
       201 ubuntu-2404          stopped    2048              32.00 0
";
    const SNAPSHOTS: &str = "\
`-> before-upgrade              2024-01-10 10:00:00     no-description
  `-> after-upgrade             2024-01-11 09:30:12     kernel 6.8
    `-> current                                         You are here!
";

    #[test]
    fn lists_and_snapshots_parse() {
        let cts = parse_pct_list(PCT_LIST);
        assert_eq!(cts.len(), 2);
        assert_eq!((cts[1].vmid, cts[1].name.as_str(), cts[1].status.as_str()), (101, "test-ct", "stopped"));
        let vms = parse_qm_list(QM_LIST);
        assert_eq!((vms[0].vmid, vms[0].name.as_str(), vms[0].status.as_str()), (200, "win11", "running"));
        let snaps = parse_snapshots(SNAPSHOTS);
        assert_eq!(snaps.len(), 2);
        assert_eq!(snaps[1], ("after-upgrade".into(), "2024-01-11 09:30:12".into(), "kernel 6.8".into()));
    }
}
