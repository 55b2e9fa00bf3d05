//! Property tests for the text every client shows to people: whatever a host, a requester or an
//! assistant wrote, what is displayed holds no character that acts on a terminal, and a quoted
//! command line still shows every argument and its boundaries.
//!
//! `PROPTEST_CASES=N` runs N cases per property instead of the number below.

use std::borrow::Cow;

use proptest::prelude::*;
use tailops_proto::text::{command_line, display, find_hidden, is_hidden, shell_quote};

fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    // `PROPTEST_CASES`, when set, is already in the default.
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { default.cases } else { 2000 };
    // No regression files in the source tree: a case worth keeping becomes a unit test.
    ProptestConfig { cases, failure_persistence: None, ..default }
}

/// Text weighted towards what matters here: controls, escapes, bidi and zero-width characters,
/// quotes, backslashes and shell syntax, mixed with ordinary letters of any script.
fn tricky_text() -> impl Strategy<Value = String> {
    let tricky = prop_oneof![
        3 => any::<char>(),
        2 => proptest::char::range('\0', '\u{a0}'),
        2 => prop::sample::select(&[
            '\'', '"', '\\', '$', '`', ' ', '\n', '\t', '\r', '\u{1b}', '\u{7f}', '\u{9b}', '\u{ad}',
            '\u{200b}', '\u{200f}', '\u{2028}', '\u{202e}', '\u{2066}', '\u{feff}', '\u{e0041}', '{', '}',
            'é', '日',
        ][..]),
        2 => proptest::char::range('a', 'z'),
    ];
    prop::collection::vec(tricky, 0..40).prop_map(|chars| chars.into_iter().collect())
}

/// Reads one word the way `shell_quote` writes it: bare, `'...'` runs joined by `\'`, or
/// `$'...'` with the escapes `display` and `shell_quote` use. `None` if it is not such a word.
fn unquote(word: &str) -> Option<String> {
    if let Some(body) = word.strip_prefix("$'") {
        let body = body.strip_suffix('\'')?;
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' => return None,
                '\\' => match chars.next()? {
                    '\\' => out.push('\\'),
                    '\'' => out.push('\''),
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'u' => {
                        if chars.next()? != '{' {
                            return None;
                        }
                        let hex: String = chars.by_ref().take_while(|c| *c != '}').collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    _ => return None,
                },
                c => out.push(c),
            }
        }
        return Some(out);
    }
    if word.starts_with('\'') {
        let mut out = String::new();
        let mut rest = word;
        loop {
            let inner = rest.strip_prefix('\'')?;
            let end = inner.find('\'')?;
            out.push_str(&inner[..end]);
            rest = &inner[end + 1..];
            if rest.is_empty() {
                return Some(out);
            }
            rest = rest.strip_prefix("\\'")?;
            out.push('\'');
            if rest.is_empty() {
                return Some(out);
            }
        }
    }
    Some(word.to_owned())
}

/// Splits a command line at the spaces between words (spaces inside quotes belong to a word).
fn words(line: &str) -> Vec<&str> {
    let mut words = Vec::new();
    // `quote`: inside `'...'` (false) or `$'...'` (true). A backslash escapes the next
    // character outside quotes and inside `$'...'`, never inside `'...'`.
    let (mut start, mut quote, mut escaped) = (0, None::<bool>, false);
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (Some(false), '\\') => {}
            (_, '\\') => escaped = true,
            (Some(_), '\'') => quote = None,
            (None, '\'') => quote = Some(line[..i].ends_with('$')),
            (None, ' ') => {
                words.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !line.is_empty() {
        words.push(&line[start..]);
    }
    words
}

proptest! {
    #![proptest_config(config())]

    /// Shown text hides nothing: no character in it acts on a terminal, every visible character
    /// of the input is still there in order, and plain text is passed through untouched.
    #[test]
    fn display_leaves_nothing_hidden_and_loses_nothing_visible(text in tricky_text()) {
        let shown = display(&text);
        prop_assert!(!shown.chars().any(is_hidden), "{:?}", shown);
        let mut visible = shown.chars();
        for c in text.chars().filter(|c| !is_hidden(*c)) {
            prop_assert!(visible.any(|s| s == c), "{:?} lost {:?}", shown, c);
        }
        let plain = find_hidden(&text, &[]).is_none();
        prop_assert_eq!(plain, matches!(shown, Cow::Borrowed(_)));
        if plain {
            prop_assert_eq!(shown.as_ref(), text.as_str());
        }
    }

    /// The first hidden character not allowed, at its byte offset; nothing before it qualifies.
    #[test]
    fn find_hidden_finds_the_first_refused_character(
        text in tricky_text(),
        allowed in prop::collection::vec(prop::sample::select(&['\t', '\n', '\r', '\u{1b}', '\u{202e}'][..]), 0..3),
    ) {
        let refused = |c: char| is_hidden(c) && !allowed.contains(&c);
        match find_hidden(&text, &allowed) {
            Some((at, c)) => {
                prop_assert!(refused(c));
                prop_assert!(text[at..].starts_with(c));
                prop_assert!(!text[..at].chars().any(refused));
            }
            None => prop_assert!(!text.chars().any(refused)),
        }
    }

    /// A quoted argument is one visible word that reads back as the argument.
    #[test]
    fn shell_quote_reads_back_and_shows_no_hidden_character(arg in tricky_text()) {
        let quoted = shell_quote(&arg);
        prop_assert!(!quoted.is_empty());
        prop_assert!(!quoted.chars().any(is_hidden), "{:?}", quoted);
        prop_assert_eq!(unquote(&quoted), Some(arg.clone()), "{}", quoted);
        if matches!(quoted, Cow::Borrowed(_)) {
            prop_assert!(!arg.contains(|c: char| " '\"\\$`;|&<>()*?[]#~!{}".contains(c)), "{:?}", arg);
        }
    }

    /// A command line shows every argument, empty ones included, at its own boundary.
    #[test]
    fn command_lines_keep_every_argument_boundary(argv in prop::collection::vec(tricky_text(), 0..6)) {
        let line = command_line(&argv);
        prop_assert!(!line.chars().any(is_hidden), "{:?}", line);
        let read: Vec<Option<String>> = words(&line).into_iter().map(unquote).collect();
        prop_assert_eq!(read, argv.into_iter().map(Some).collect::<Vec<_>>(), "{}", line);
    }
}

#[test]
fn the_reader_used_above_reads_what_the_unit_tests_expect() {
    assert_eq!(words(r#"sh -c 'echo '\''hi'\'' there' '' $'a\u{1b}b'"#).len(), 5);
    assert_eq!(unquote(r"'it'\''s'"), Some("it's".to_owned()));
    assert_eq!(unquote(r"$'a\\b\u{1b}'"), Some("a\\b\u{1b}".to_owned()));
}
