//! `net.<iface>.{mac,mtu,state,addresses}` for each interface in `/sys/class/net` but `lo`.
//!
//! The interface list and attributes come from sysfs (under the configured root); addresses
//! come from `getifaddrs`, i.e. from the running kernel, for the interfaces sysfs lists.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use super::{Facts, insert, list, read_value, under};

pub(crate) async fn collect(root: &Path) -> Facts {
    let mut facts = Facts::new();
    let names = interface_names(root).await;
    let mut addresses = addresses_by_interface();
    for name in names {
        let dir = format!("/sys/class/net/{name}");
        // An interface without a hardware address (tun, wireguard) has an empty `address`.
        if let Some(mac) = read_value(root, &format!("{dir}/address")).await {
            insert(&mut facts, format!("net.{name}.mac"), mac);
        }
        if let Some(mtu) = read_value(root, &format!("{dir}/mtu")).await {
            insert(&mut facts, format!("net.{name}.mtu"), mtu);
        }
        if let Some(state) = read_value(root, &format!("{dir}/operstate")).await {
            insert(&mut facts, format!("net.{name}.state"), state);
        }
        if let Some(cidrs) = addresses.remove(&name) {
            insert(&mut facts, format!("net.{name}.addresses"), list(cidrs));
        }
    }
    facts
}

async fn interface_names(root: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let Ok(mut dir) = tokio::fs::read_dir(under(root, "/sys/class/net")).await else {
        return names;
    };
    while let Ok(Some(entry)) = dir.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "lo" {
            names.push(name);
        }
    }
    names
}

/// Every IPv4 and IPv6 address as a CIDR, by interface name. `getifaddrs` asks the kernel over
/// netlink and returns at once; it does not block like file or network I/O can.
fn addresses_by_interface() -> BTreeMap<String, Vec<String>> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return by_name;
    };
    for ifa in addrs {
        let (Some(address), Some(netmask)) = (ifa.address.as_ref(), ifa.netmask.as_ref()) else {
            continue;
        };
        let cidr = if let (Some(a), Some(m)) = (address.as_sockaddr_in(), netmask.as_sockaddr_in()) {
            cidr(IpAddr::V4(a.ip()), u32::from(m.ip()).count_ones())
        } else if let (Some(a), Some(m)) = (address.as_sockaddr_in6(), netmask.as_sockaddr_in6()) {
            cidr(IpAddr::V6(a.ip()), u128::from(m.ip()).count_ones())
        } else {
            // Link-layer (AF_PACKET) entries: the MAC comes from sysfs.
            continue;
        };
        by_name.entry(ifa.interface_name).or_default().push(cidr);
    }
    by_name
}

fn cidr(address: IpAddr, prefix: u32) -> String {
    format!("{address}/{prefix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testutil::fixture_root;

    #[tokio::test]
    async fn interfaces_from_sysfs_without_loopback() {
        // Names no real host has, so that getifaddrs contributes nothing to the fixture.
        let root = fixture_root(&[
            ("/sys/class/net/lo/address", "00:00:00:00:00:00\n"),
            ("/sys/class/net/lo/mtu", "65536\n"),
            ("/sys/class/net/tofix0/address", "52:54:00:12:34:56\n"),
            ("/sys/class/net/tofix0/mtu", "1500\n"),
            ("/sys/class/net/tofix0/operstate", "up\n"),
            ("/sys/class/net/tofixts/address", "\n"),
            ("/sys/class/net/tofixts/mtu", "1280\n"),
            ("/sys/class/net/tofixts/operstate", "unknown\n"),
        ])
        .await;
        let facts = collect(root.path()).await;
        let expected: Facts = [
            ("net.tofix0.mac", "52:54:00:12:34:56"),
            ("net.tofix0.mtu", "1500"),
            ("net.tofix0.state", "up"),
            ("net.tofixts.mtu", "1280"),
            ("net.tofixts.state", "unknown"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(facts, expected);
    }

    #[test]
    fn loopback_addresses_come_from_getifaddrs() {
        let addresses = addresses_by_interface();
        let lo = addresses.get("lo").expect("lo has addresses");
        assert!(lo.contains(&"127.0.0.1/8".to_owned()), "{lo:?}");
    }
}
