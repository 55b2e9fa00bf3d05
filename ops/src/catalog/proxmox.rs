//! Proxmox VE guests (LXC containers through `pct`, VMs through `qm`), on a Proxmox host.

use super::{K, OperationSpec, ParamSpec, RiskTier, param};

const VMID: ParamSpec = param("vmid", K::Int { min: 100, max: 999_999_999 }, "the guest's id (100 or more)");
const SNAPSHOT: ParamSpec = param("snapshot", K::SnapshotName, "the snapshot's name");

const fn guest(name: &'static str, summary: &'static str) -> OperationSpec {
    OperationSpec { name, summary, tier: RiskTier::Control, mutating: true, params: &[VMID] }
}

pub(super) static OPS: &[OperationSpec] = &[
    OperationSpec {
        name: "proxmox.list",
        summary: "LXC containers and VMs on this Proxmox host with their status",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[],
    },
    guest("proxmox.start", "Start a container or VM"),
    guest("proxmox.stop", "Stop a container or VM (immediately, like pulling the plug)"),
    guest("proxmox.shutdown", "Shut a container or VM down cleanly"),
    guest("proxmox.reboot", "Reboot a container or VM"),
    OperationSpec {
        name: "proxmox.snapshots",
        summary: "A guest's snapshots",
        tier: RiskTier::Observe,
        mutating: false,
        params: &[VMID],
    },
    OperationSpec {
        name: "proxmox.snapshot",
        summary: "Take a snapshot of a guest",
        tier: RiskTier::Control,
        mutating: true,
        params: &[VMID, SNAPSHOT],
    },
    OperationSpec {
        name: "proxmox.rollback",
        summary: "Roll a guest back to a snapshot (its later state is lost)",
        tier: RiskTier::Admin,
        mutating: true,
        params: &[VMID, SNAPSHOT],
    },
];
