//! `virt.kind` (`bare-metal` | `vm` | `container`), `virt.technology` and, inside a Proxmox
//! LXC container, `virt.proxmox_ctid` — from files alone, without `systemd-detect-virt`.
//!
//! A container is reported before a VM: a container in a VM is managed as a container. The
//! evidence, strongest first:
//! - containers: PID 1's `container=` environment variable (set by LXC, systemd-nspawn, podman,
//!   docker for systemd's sake), `/run/.containerenv` (podman), `/.dockerenv` (docker), the
//!   runtime's name in PID 1's cgroup path, `microsoft` in the kernel release (WSL);
//! - VMs: `/sys/hypervisor/type` (Xen), the DMI vendor and product names, the `kvm-clock`
//!   clock source (KVM without DMI, e.g. Firecracker), the `hypervisor` CPU flag (some VM);
//! - otherwise, if `/proc/cpuinfo` could be read, bare metal. ARM VMs without DMI and without
//!   the x86 `hypervisor` flag look like bare metal here, as they do to `systemd-detect-virt`.

use std::path::Path;

use super::{Facts, exists, insert, read_text, read_value};

pub(super) async fn collect(root: &Path) -> Facts {
    detect(&Evidence::gather(root).await)
}

/// What the files say; missing files read as empty.
#[derive(Debug, Default)]
struct Evidence {
    dockerenv: bool,
    containerenv: bool,
    /// `/proc/1/environ` (NUL-separated), readable by root only.
    pid1_environ: String,
    pid1_cgroup: String,
    mountinfo: String,
    kernel_release: String,
    hypervisor_type: String,
    dmi_vendor: String,
    dmi_product: String,
    clocksources: String,
    cpuinfo: Option<String>,
}

impl Evidence {
    async fn gather(root: &Path) -> Self {
        let text = |path: &'static str| async move { read_text(root, path).await.unwrap_or_default() };
        let value = |path: &'static str| async move { read_value(root, path).await.unwrap_or_default() };
        let (dockerenv, containerenv, pid1_environ, pid1_cgroup, mountinfo) = tokio::join!(
            exists(root, "/.dockerenv"),
            exists(root, "/run/.containerenv"),
            text("/proc/1/environ"),
            text("/proc/1/cgroup"),
            text("/proc/self/mountinfo"),
        );
        let (kernel_release, hypervisor_type, dmi_vendor, dmi_product, clocksources, cpuinfo) = tokio::join!(
            value("/proc/sys/kernel/osrelease"),
            value("/sys/hypervisor/type"),
            value("/sys/class/dmi/id/sys_vendor"),
            value("/sys/class/dmi/id/product_name"),
            value("/sys/devices/system/clocksource/clocksource0/available_clocksource"),
            read_text(root, "/proc/cpuinfo"),
        );
        Self {
            dockerenv,
            containerenv,
            pid1_environ,
            pid1_cgroup,
            mountinfo,
            kernel_release,
            hypervisor_type,
            dmi_vendor,
            dmi_product,
            clocksources,
            cpuinfo,
        }
    }
}

fn detect(e: &Evidence) -> Facts {
    let mut facts = Facts::new();
    let ctid = proxmox_ctid(&e.pid1_cgroup, &e.mountinfo);
    // A Proxmox volume name as the root filesystem is itself proof of an LXC container.
    let container = container_technology(e).or_else(|| ctid.as_ref().map(|_| "lxc".to_owned()));
    if let Some(technology) = container {
        insert(&mut facts, "virt.kind", "container");
        if technology == "lxc"
            && let Some(ctid) = ctid
        {
            insert(&mut facts, "virt.proxmox_ctid", ctid);
        }
        insert(&mut facts, "virt.technology", technology);
    } else if let Some(technology) = vm_technology(e) {
        insert(&mut facts, "virt.kind", "vm");
        insert(&mut facts, "virt.technology", technology.unwrap_or_default());
    } else if e.cpuinfo.is_some() {
        insert(&mut facts, "virt.kind", "bare-metal");
    }
    facts
}

/// The container runtime, or `None` outside a container.
fn container_technology(e: &Evidence) -> Option<String> {
    let declared = e.pid1_environ.split('\0').find_map(|var| var.strip_prefix("container="));
    if let Some(runtime) = declared.map(str::trim).filter(|r| !r.is_empty()) {
        return Some(runtime.to_owned());
    }
    if e.containerenv {
        return Some("podman".to_owned());
    }
    if e.dockerenv {
        return Some("docker".to_owned());
    }
    // cgroup v1 paths, and v2 paths without a cgroup namespace, name the runtime:
    // `/docker/<id>`, `/system.slice/docker-<id>.scope`, `/machine.slice/libpod-<id>.scope`,
    // `/lxc/<name>/` or `/lxc.payload.<name>/`.
    let paths = e.pid1_cgroup.lines().filter_map(|line| line.splitn(3, ':').nth(2));
    for path in paths {
        if path.contains("/docker/") || path.contains("/docker-") {
            return Some("docker".to_owned());
        }
        if path.contains("/libpod-") || path.contains("/libpod_parent") {
            return Some("podman".to_owned());
        }
        if path.contains("/lxc/") || path.contains("/lxc.payload.") {
            return Some("lxc".to_owned());
        }
    }
    // WSL 2 kernels are released as e.g. `5.15.153.1-microsoft-standard-WSL2`.
    if e.kernel_release.to_ascii_lowercase().contains("microsoft") {
        return Some("wsl".to_owned());
    }
    None
}

/// `Some(technology)` in a VM (`Some(None)` when the hypervisor cannot be named), `None`
/// otherwise.
fn vm_technology(e: &Evidence) -> Option<Option<String>> {
    if e.hypervisor_type == "xen" {
        return Some(Some("xen".to_owned()));
    }
    let kvm_clock = e.clocksources.split_whitespace().any(|c| c == "kvm-clock");
    let vendor = e.dmi_vendor.as_str();
    let product = e.dmi_product.as_str();
    let named = if vendor.starts_with("QEMU") {
        // QEMU's DMI with the KVM paravirtual clock is QEMU accelerated by KVM (Proxmox VMs,
        // libvirt/KVM); without it, QEMU emulating.
        Some(if kvm_clock { "kvm" } else { "qemu" })
    } else if product.starts_with("KVM")
        || product.starts_with("OpenStack")
        || vendor.starts_with("OpenStack")
    {
        Some("kvm")
    } else if vendor.starts_with("VMware") || product.starts_with("VMware") {
        Some("vmware")
    } else if vendor == "Microsoft Corporation" && product == "Virtual Machine" {
        Some("hyperv")
    } else if vendor == "innotek GmbH" || product == "VirtualBox" {
        Some("virtualbox")
    } else if vendor.starts_with("Xen") {
        Some("xen")
    } else if vendor == "Amazon EC2" {
        Some("amazon")
    } else if vendor == "Google" && product == "Google Compute Engine" {
        Some("google")
    } else if vendor.starts_with("Parallels") {
        Some("parallels")
    } else if vendor == "BHYVE" {
        Some("bhyve")
    } else if kvm_clock {
        Some("kvm")
    } else {
        None
    };
    if let Some(named) = named {
        return Some(Some(named.to_owned()));
    }
    let hypervisor_flag = e.cpuinfo.as_deref().is_some_and(|cpuinfo| {
        cpuinfo
            .lines()
            .filter_map(|line| line.split_once(':'))
            .any(|(key, value)| key.trim() == "flags" && value.split_whitespace().any(|f| f == "hypervisor"))
    });
    hypervisor_flag.then_some(None)
}

/// The Proxmox container id (VMID). Proxmox names each container's cgroup after its numeric
/// VMID (`/lxc/101/` with cgroup v1, `/lxc.payload.101/` with v2), visible in PID 1's cgroup
/// or in the cgroup mounts' roots in mountinfo when the container has no cgroup namespace.
/// With a namespace, the root filesystem's source still carries the volume name Proxmox gave
/// it: `rpool/data/subvol-101-disk-0` (ZFS), `/dev/mapper/pve-vm--101--disk--0` (LVM, where
/// device-mapper doubles the dashes). VMIDs are 100 or more; smaller numbers are not taken as
/// evidence. Containers on storage that hides the volume name (a loop-mounted raw image, RBD)
/// and with a cgroup namespace have no visible id.
fn proxmox_ctid(pid1_cgroup: &str, mountinfo: &str) -> Option<String> {
    let from_cgroup = |text: &str| {
        ["/lxc/", "/lxc.payload."].iter().find_map(|marker| vmid_after(text, marker, &["/", " ", "\n", ""]))
    };
    from_cgroup(pid1_cgroup)
        .or_else(|| from_cgroup(mountinfo))
        .or_else(|| {
            let source = root_source(mountinfo)?;
            [("subvol-", "-disk-"), ("vm--", "--disk--"), ("vm-", "-disk-")]
                .iter()
                .find_map(|(before, after)| vmid_after(source, before, &[after]))
        })
        .map(|id| id.to_string())
}

/// The first VMID (a number >= 100) that follows `marker` in `text` and is followed by one of
/// `ends` (`""` = the end of `text`).
fn vmid_after(text: &str, marker: &str, ends: &[&str]) -> Option<u32> {
    text.match_indices(marker).find_map(|(at, _)| {
        let rest = &text[at + marker.len()..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let after = &rest[digits..];
        let ended =
            ends.iter().any(|end| if end.is_empty() { after.is_empty() } else { after.starts_with(end) });
        let id: u32 = rest[..digits].parse().ok()?;
        (ended && id >= 100).then_some(id)
    })
}

/// The source of the filesystem mounted at `/` (the last such mount: mounts stack). In
/// mountinfo the mount point is the fifth field and the source follows `-` and the fstype.
fn root_source(mountinfo: &str) -> Option<&str> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            (mount.split(' ').nth(4)? == "/").then_some(())?;
            fs.split(' ').nth(1)
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testutil::fixture_root;

    const CPUINFO_VM: &str =
        "processor\t: 0\nmodel name\t: QEMU Virtual CPU\nflags\t\t: fpu vme de pse tsc hypervisor lahf_lm\n";
    const CPUINFO_METAL: &str =
        "processor\t: 0\nmodel name\t: AMD Ryzen 7 5700G\nflags\t\t: fpu vme de pse tsc lahf_lm\n";

    fn kind_and_technology(facts: &Facts) -> (Option<&str>, Option<&str>) {
        (facts.get("virt.kind").map(String::as_str), facts.get("virt.technology").map(String::as_str))
    }

    #[tokio::test]
    async fn docker_container() {
        let root = fixture_root(&[
            ("/.dockerenv", ""),
            ("/proc/1/cgroup", "0::/\n"),
            ("/proc/cpuinfo", CPUINFO_VM),
            ("/sys/class/dmi/id/sys_vendor", "QEMU\n"),
        ])
        .await;
        let facts = collect(root.path()).await;
        assert_eq!(kind_and_technology(&facts), (Some("container"), Some("docker")));
        assert!(!facts.contains_key("virt.proxmox_ctid"));

        // Without the marker file, the cgroup v1 path of PID 1 names docker.
        let root = fixture_root(&[
            ("/proc/1/cgroup", "12:pids:/docker/4f1c2e0a9b\n11:memory:/docker/4f1c2e0a9b\n0::/\n"),
            ("/proc/cpuinfo", CPUINFO_METAL),
        ])
        .await;
        assert_eq!(kind_and_technology(&collect(root.path()).await), (Some("container"), Some("docker")));
    }

    #[tokio::test]
    async fn proxmox_lxc_container_on_zfs() {
        // A Proxmox VE 8 container (cgroup v2 with a namespace, so the cgroup path is "/"):
        // LXC sets container=lxc for PID 1, and the root filesystem is the CT's ZFS subvolume.
        let mountinfo = "\
1183 1147 0:61 / / rw,relatime shared:656 master:1 - zfs rpool/data/subvol-104-disk-0 rw,xattr,posixacl,casesensitive
1184 1183 0:63 / /dev rw,relatime shared:657 - tmpfs none rw,size=492k,mode=755,uid=100000,gid=100000,inode64
1190 1186 0:27 / /proc/sys/net rw,nosuid,nodev,noexec,relatime shared:662 - proc proc rw
1204 1183 0:69 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:676 - cgroup2 cgroup2 rw,nsdelegate
1212 1188 0:58 /proc/cpuinfo /proc/cpuinfo rw,nosuid,nodev,relatime shared:684 master:5 - fuse.lxcfs lxcfs rw,user_id=0,group_id=0,allow_other
";
        let root = fixture_root(&[
            ("/proc/1/environ", "container=lxc\0PATH=/usr/sbin:/usr/bin:/sbin:/bin\0TERM=linux\0"),
            ("/proc/1/cgroup", "0::/\n"),
            ("/proc/self/mountinfo", mountinfo),
            ("/proc/cpuinfo", CPUINFO_METAL),
        ])
        .await;
        let facts = collect(root.path()).await;
        assert_eq!(kind_and_technology(&facts), (Some("container"), Some("lxc")));
        assert_eq!(facts.get("virt.proxmox_ctid").map(String::as_str), Some("104"));
    }

    #[tokio::test]
    async fn proxmox_lxc_without_root_access_to_pid1() {
        // Not root: /proc/1/environ is unreadable. The LVM volume name alone shows a Proxmox CT.
        let mountinfo = "\
521 489 253:7 / / rw,relatime shared:261 master:1 - ext4 /dev/mapper/pve-vm--230--disk--0 rw,stripe=16
522 521 0:55 / /dev rw,relatime shared:262 - tmpfs none rw,size=492k,mode=755
";
        let root =
            fixture_root(&[("/proc/self/mountinfo", mountinfo), ("/proc/cpuinfo", CPUINFO_METAL)]).await;
        let facts = collect(root.path()).await;
        assert_eq!(kind_and_technology(&facts), (Some("container"), Some("lxc")));
        assert_eq!(facts.get("virt.proxmox_ctid").map(String::as_str), Some("230"));
    }

    #[test]
    fn proxmox_ctid_from_cgroup_paths() {
        // Proxmox VE 6 (cgroup v1, no cgroup namespace).
        let cgroup = "12:memory:/lxc/117/ns\n11:pids:/lxc/117/ns/init.scope\n0::/lxc/117/ns/init.scope\n";
        assert_eq!(proxmox_ctid(cgroup, "").as_deref(), Some("117"));
        assert_eq!(proxmox_ctid("0::/lxc.payload.9001/init.scope\n", "").as_deref(), Some("9001"));
        // A plain LXC container with a name, a too-small number, or a name starting with digits.
        assert_eq!(proxmox_ctid("0::/lxc/web1/\n", ""), None);
        assert_eq!(proxmox_ctid("0::/lxc/42/\n", ""), None);
        assert_eq!(proxmox_ctid("0::/lxc/123abc/\n", ""), None);
        // A Proxmox host's own root is not a CT volume.
        let host = "29 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/pve-root rw,errors=remount-ro\n";
        assert_eq!(proxmox_ctid("0::/init.scope\n", host), None);
    }

    #[tokio::test]
    async fn kvm_vm_by_dmi() {
        let root = fixture_root(&[
            ("/sys/class/dmi/id/sys_vendor", "QEMU\n"),
            ("/sys/class/dmi/id/product_name", "Standard PC (i440FX + PIIX, 1996)\n"),
            (
                "/sys/devices/system/clocksource/clocksource0/available_clocksource",
                "kvm-clock tsc hpet acpi_pm \n",
            ),
            ("/proc/1/cgroup", "0::/init.scope\n"),
            ("/proc/cpuinfo", CPUINFO_VM),
        ])
        .await;
        assert_eq!(kind_and_technology(&collect(root.path()).await), (Some("vm"), Some("kvm")));

        // The same DMI without the KVM clock: QEMU emulating.
        let root =
            fixture_root(&[("/sys/class/dmi/id/sys_vendor", "QEMU\n"), ("/proc/cpuinfo", CPUINFO_VM)]).await;
        assert_eq!(kind_and_technology(&collect(root.path()).await), (Some("vm"), Some("qemu")));
    }

    #[tokio::test]
    async fn other_hypervisors_and_bare_metal() {
        type Case = (&'static [(&'static str, &'static str)], (Option<&'static str>, Option<&'static str>));
        let cases: &[Case] = &[
            (
                &[
                    ("/sys/class/dmi/id/sys_vendor", "Microsoft Corporation\n"),
                    ("/sys/class/dmi/id/product_name", "Virtual Machine\n"),
                    ("/proc/cpuinfo", CPUINFO_VM),
                ],
                (Some("vm"), Some("hyperv")),
            ),
            (
                &[("/sys/class/dmi/id/sys_vendor", "VMware, Inc.\n"), ("/proc/cpuinfo", CPUINFO_VM)],
                (Some("vm"), Some("vmware")),
            ),
            (&[("/sys/hypervisor/type", "xen\n"), ("/proc/cpuinfo", CPUINFO_VM)], (Some("vm"), Some("xen"))),
            // A hypervisor nothing names.
            (
                &[("/sys/class/dmi/id/sys_vendor", "Hetzner\n"), ("/proc/cpuinfo", CPUINFO_VM)],
                (Some("vm"), None),
            ),
            (
                &[("/run/.containerenv", ""), ("/proc/cpuinfo", CPUINFO_METAL)],
                (Some("container"), Some("podman")),
            ),
            (
                &[
                    ("/proc/sys/kernel/osrelease", "5.15.153.1-microsoft-standard-WSL2\n"),
                    ("/proc/cpuinfo", CPUINFO_VM),
                ],
                (Some("container"), Some("wsl")),
            ),
            (
                &[
                    ("/sys/class/dmi/id/sys_vendor", "ASUS\n"),
                    ("/sys/class/dmi/id/product_name", "System Product Name\n"),
                    ("/proc/1/cgroup", "0::/init.scope\n"),
                    ("/proc/cpuinfo", CPUINFO_METAL),
                ],
                (Some("bare-metal"), None),
            ),
            // Nothing readable: nothing claimed.
            (&[], (None, None)),
        ];
        for (files, expected) in cases {
            let root = fixture_root(files).await;
            assert_eq!(kind_and_technology(&collect(root.path()).await), *expected, "{files:?}");
        }
    }
}
