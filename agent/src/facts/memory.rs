//! `memory.total_bytes` and `swap.total_bytes` from `/proc/meminfo`.

use std::path::Path;

use super::{Facts, insert, read_text};

pub(super) async fn collect(root: &Path) -> Facts {
    let mut facts = Facts::new();
    let Some(meminfo) = read_text(root, "/proc/meminfo").await else {
        return facts;
    };
    for (field, key) in [("MemTotal", "memory.total_bytes"), ("SwapTotal", "swap.total_bytes")] {
        if let Some(bytes) = field_bytes(&meminfo, field) {
            insert(&mut facts, key, bytes.to_string());
        }
    }
    facts
}

/// A `Field:   123 kB` line in bytes (the kernel's "kB" are KiB).
fn field_bytes(meminfo: &str, field: &str) -> Option<u64> {
    let rest = meminfo.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?;
    let mut words = rest.split_whitespace();
    let number: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => number.checked_mul(1024),
        None => Some(number),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testutil::fixture_root;

    #[tokio::test]
    async fn totals_in_bytes() {
        let meminfo = "MemTotal:       16303940 kB\nMemFree:         9271212 kB\nSwapCached:            0 kB\nSwapTotal:       1000444 kB\nHugePages_Total:       0\n";
        let root = fixture_root(&[("/proc/meminfo", meminfo)]).await;
        let facts = collect(root.path()).await;
        assert_eq!(facts["memory.total_bytes"], (16_303_940u64 * 1024).to_string());
        assert_eq!(facts["swap.total_bytes"], (1_000_444u64 * 1024).to_string());
        assert_eq!(facts.len(), 2);
    }

    #[test]
    fn unparseable_lines_are_absent() {
        assert_eq!(field_bytes("MemTotal: lots kB\n", "MemTotal"), None);
        assert_eq!(field_bytes("MemTotal: 5 MB\n", "MemTotal"), None);
        assert_eq!(field_bytes("SwapTotal: 0 kB\n", "SwapTotal"), Some(0));
    }
}
