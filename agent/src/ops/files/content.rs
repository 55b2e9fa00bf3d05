//! Content checks for key material: the second line of defence behind the allowlist and the
//! deny list, for keys kept where no name rule can know (a key pasted into `notes.txt`, a
//! profile renamed, a hard link, a log that printed a key).
//!
//! `file.read` and `file.tail` refuse when the bytes around what they would return hold a
//! marker: the window reaches [`WINDOW`] beyond both ends, so a read that starts or ends inside
//! a key's body still sees its `BEGIN` or `END` line. Followed logs cannot refuse lines already
//! sent, so they redact: a marked line and the key body lines after it.

use std::borrow::Cow;

/// How far beyond what is returned the content check looks. Larger than any PEM, OpenSSH,
/// PGP or PuTTY private key a host is likely to hold (an RSA-8192 PEM key is about 6.3 KiB).
pub(crate) const WINDOW: u64 = 16 * 1024;

/// Byte strings that appear in private keys and nowhere harmless: PEM and OpenSSH (`BEGIN/END
/// ... PRIVATE KEY-----`), PGP armour (`PRIVATE KEY BLOCK-----`), PuTTY key files, and TailOps
/// profiles (`key_pem`).
const MARKERS: &[&[u8]] =
    &[b"PRIVATE KEY-----", b"PRIVATE KEY BLOCK-----", b"key_pem", b"PuTTY-User-Key-File-", b"Private-Lines:"];

/// What a redacted line reads as.
pub(crate) const REDACTED: &str = "[line redacted by the agent: private key material]";

/// Whether `bytes` hold a private key marker. One pass: every marker starts with `P` or `k`.
pub(crate) fn holds_key_material(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, b)| matches!(b, b'P' | b'k') && MARKERS.iter().any(|m| bytes[i..].starts_with(m)))
}

/// Lines of a key's body and armour headers: base64, blank, or `Name: value` headers of PEM,
/// PGP and PuTTY keys.
fn key_body(line: &str) -> bool {
    const HEADERS: &[&str] = &[
        "Proc-Type:",
        "DEK-Info:",
        "Comment:",
        "Version:",
        "Hash:",
        "Encryption:",
        "Public-Lines:",
        "Private-MAC:",
        "Key-Derivation:",
        "Argon2-",
    ];
    let line = line.trim();
    HEADERS.iter().any(|h| line.starts_with(h))
        || line.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=\"\\".contains(&b))
}

/// Redacts followed lines: a line with a marker, and after a `BEGIN` marker every line that
/// looks like a key's body, until an `END` marker or a line that does not.
#[derive(Debug, Default)]
pub(crate) struct KeyRedactor {
    inside: bool,
}

impl KeyRedactor {
    pub(crate) fn line<'a>(&mut self, line: &'a str) -> Cow<'a, str> {
        if holds_key_material(line.as_bytes()) {
            self.inside = !line.contains("-----END ");
            return Cow::Borrowed(REDACTED);
        }
        if self.inside {
            if key_body(line) {
                return Cow::Borrowed(REDACTED);
            }
            self.inside = false;
        }
        Cow::Borrowed(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\nZmFrZSBrZXkgYm9keSBmb3IgdGVzdHM=\n-----END PRIVATE KEY-----\n";

    #[test]
    fn key_markers_are_found() {
        assert!(MARKERS.iter().all(|m| matches!(m[0], b'P' | b'k')), "the scan looks only at these");
        for text in [
            PEM,
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            "-----BEGIN RSA PRIVATE KEY-----",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----",
            "-----BEGIN PGP PRIVATE KEY BLOCK-----",
            "key_pem = \"\"\"",
            "PuTTY-User-Key-File-3: ssh-ed25519",
            "-----END EC PRIVATE KEY-----",
        ] {
            assert!(holds_key_material(text.as_bytes()), "{text}");
        }
        for text in ["-----BEGIN CERTIFICATE-----", "-----BEGIN PUBLIC KEY-----", "private key rotated", ""] {
            assert!(!holds_key_material(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn followed_keys_are_redacted_with_their_bodies() {
        let log = format!("start\n{PEM}after the key\nAAAA plain line\n");
        let mut redactor = KeyRedactor::default();
        let shown: Vec<String> = log.lines().map(|l| redactor.line(l).into_owned()).collect();
        assert_eq!(
            shown,
            ["start", REDACTED, REDACTED, REDACTED, REDACTED, "after the key", "AAAA plain line"]
        );

        // A key with no END line stops being redacted at the first ordinary log line.
        let mut redactor = KeyRedactor::default();
        let shown: Vec<String> =
            ["key_pem = \"\"\"-----BEGIN PRIVATE KEY-----", "MIGHAgEAMBMG", "", "Dec  3 ok"]
                .iter()
                .map(|l| redactor.line(l).into_owned())
                .collect();
        assert_eq!(shown, [REDACTED, REDACTED, REDACTED, "Dec  3 ok"]);

        let putty = "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: k\nPublic-Lines: 1\nAAAAC3Nz\nPrivate-Lines: 1\nAAAAIBx\nPrivate-MAC: 0f3a\nnext entry here";
        let mut redactor = KeyRedactor::default();
        let shown: Vec<String> = putty.lines().map(|l| redactor.line(l).into_owned()).collect();
        assert_eq!(shown.iter().filter(|l| *l == REDACTED).count(), 8, "{shown:?}");
        assert_eq!(shown.last().map(String::as_str), Some("next entry here"));
    }
}
