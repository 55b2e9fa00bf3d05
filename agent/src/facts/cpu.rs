//! `cpu.*` from `/proc/cpuinfo`: the model, logical processors, and sockets and physical cores
//! where the kernel reports the topology (x86 does; most ARM kernels do not).

use std::collections::BTreeSet;
use std::path::Path;

use super::{Facts, insert, read_text};

pub(super) async fn collect(root: &Path) -> Facts {
    match read_text(root, "/proc/cpuinfo").await {
        Some(text) => parse(&text),
        None => Facts::new(),
    }
}

fn parse(cpuinfo: &str) -> Facts {
    // Keys are case-sensitive: on 32-bit ARM `processor` is an index and `Processor` the model.
    let fields = cpuinfo.lines().filter_map(|line| {
        let (key, value) = line.split_once(':')?;
        Some((key.trim(), value.trim()))
    });
    let mut processors = 0usize;
    let mut model_name = None;
    let mut arm_processor = None;
    let mut hardware = None;
    let mut physical_id = None;
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    for (key, value) in fields {
        match key {
            // Each logical processor's block starts with `processor`; `physical id` and
            // `core id` follow within it.
            "processor" => {
                processors += 1;
                physical_id = None;
            }
            "model name" if model_name.is_none() => model_name = Some(value),
            "Processor" if arm_processor.is_none() => arm_processor = Some(value),
            "Hardware" if hardware.is_none() => hardware = Some(value),
            "physical id" => {
                physical_id = Some(value);
                sockets.insert(value);
            }
            "core id" => {
                if let Some(socket) = physical_id {
                    cores.insert((socket, value));
                }
            }
            _ => {}
        }
    }

    let mut facts = Facts::new();
    if let Some(model) = model_name.or(arm_processor).or(hardware) {
        insert(&mut facts, "cpu.model", model);
    }
    if processors > 0 {
        insert(&mut facts, "cpu.cores", processors.to_string());
    }
    if !sockets.is_empty() {
        insert(&mut facts, "cpu.sockets", sockets.len().to_string());
    }
    if !cores.is_empty() {
        insert(&mut facts, "cpu.physical_cores", cores.len().to_string());
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testutil::fixture_root;

    /// Two sockets, two cores each, hyper-threaded: 8 logical processors (trimmed to the fields
    /// that matter; real blocks have ~25 lines).
    const XEON: &str = "\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz
physical id\t: 0
siblings\t: 4
core id\t\t: 0
cpu cores\t: 2
flags\t\t: fpu vme de pse tsc msr pae mce

processor\t: 1
model name\t: Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz
physical id\t: 0
core id\t\t: 1

processor\t: 2
model name\t: Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz
physical id\t: 1
core id\t\t: 0

processor\t: 3
model name\t: Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz
physical id\t: 1
core id\t\t: 1

processor\t: 4
model name\t: Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz
physical id\t: 0
core id\t\t: 0

processor\t: 5
model name\t: Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz
physical id\t: 0
core id\t\t: 1

processor\t: 6
model name\t: Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz
physical id\t: 1
core id\t\t: 0

processor\t: 7
model name\t: Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz
physical id\t: 1
core id\t\t: 1
";

    /// A Raspberry Pi 3 on a 32-bit kernel.
    const RPI_ARMV7: &str = "\
processor\t: 0
model name\t: ARMv7 Processor rev 4 (v7l)
BogoMIPS\t: 38.40
Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32
CPU implementer\t: 0x41

processor\t: 1
model name\t: ARMv7 Processor rev 4 (v7l)
BogoMIPS\t: 38.40

Hardware\t: BCM2835
Revision\t: a02082
Serial\t\t: 00000000a1b2c3d4
Model\t\t: Raspberry Pi 3 Model B Rev 1.2
";

    /// An old ARM kernel: no `model name`, the model under `Processor`.
    const OLD_ARM: &str = "\
Processor\t: ARMv6-compatible processor rev 7 (v6l)
processor\t: 0
BogoMIPS\t: 697.95
Hardware\t: BCM2708
";

    /// A 64-bit ARM server kernel: neither model name nor Processor nor Hardware.
    const ARM64: &str = "\
processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41

processor\t: 1
BogoMIPS\t: 50.00
";

    #[tokio::test]
    async fn x86_topology() {
        let root = fixture_root(&[("/proc/cpuinfo", XEON)]).await;
        let facts = collect(root.path()).await;
        assert_eq!(facts["cpu.model"], "Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz");
        assert_eq!(facts["cpu.cores"], "8");
        assert_eq!(facts["cpu.sockets"], "2");
        assert_eq!(facts["cpu.physical_cores"], "4");
    }

    #[test]
    fn arm_models_and_missing_topology() {
        let pi = parse(RPI_ARMV7);
        assert_eq!(pi["cpu.model"], "ARMv7 Processor rev 4 (v7l)");
        assert_eq!(pi["cpu.cores"], "2");
        assert!(!pi.contains_key("cpu.sockets") && !pi.contains_key("cpu.physical_cores"));

        let old = parse(OLD_ARM);
        assert_eq!(old["cpu.model"], "ARMv6-compatible processor rev 7 (v6l)");
        assert_eq!(old["cpu.cores"], "1");

        let board_only = parse("processor\t: 0\nBogoMIPS\t: 48.00\n\nHardware\t: Allwinner sun8i Family\n");
        assert_eq!(board_only["cpu.model"], "Allwinner sun8i Family");

        let server = parse(ARM64);
        assert!(!server.contains_key("cpu.model"));
        assert_eq!(server["cpu.cores"], "2");
    }

    #[tokio::test]
    async fn no_cpuinfo_no_facts() {
        let root = fixture_root(&[]).await;
        assert!(collect(root.path()).await.is_empty());
    }
}
