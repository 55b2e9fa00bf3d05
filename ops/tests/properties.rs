//! Property tests: operation validation against generated input, valid and hostile. Every
//! party (controller, agent, CLI, MCP bridge) runs `validate` on text it did not write, so it
//! must never panic and every refusal must name what to fix.
//!
//! `PROPTEST_CASES=N` runs N cases per property instead of the number below.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::select;
use tailops_ops::{OperationSpec, OpsError, ParamKind, Value, catalog, find, validate};

fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    // `PROPTEST_CASES`, when set, is already in the default.
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { default.cases } else { 2000 };
    // No regression files in the source tree: a case worth keeping becomes a unit test.
    ProptestConfig { cases, failure_persistence: None, ..default }
}

fn specs() -> Vec<&'static OperationSpec> {
    catalog().collect()
}

/// Anything a caller could send: control and format characters, option-like text, non-ASCII,
/// and now and then something long.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[ -~]{0,40}",
        2 => "-{1,2}[a-z=]{0,12}",
        1 => "[\u{0}-\u{1f}\u{7f}\u{202a}-\u{202e}\u{2066}-\u{2069}a/.*:]{0,20}",
        1 => (any::<char>(), 0usize..9000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

fn re(regex: &str) -> BoxedStrategy<String> {
    proptest::string::string_regex(regex).expect("a valid regex").boxed()
}

/// A value `kind` accepts, written the way a person would.
fn valid_value(kind: ParamKind) -> BoxedStrategy<String> {
    let label = "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?";
    let dns = format!("{label}(\\.{label}){{0,3}}");
    match kind {
        // No power unit begins with `u`.
        ParamKind::Unit => re("u[a-zA-Z0-9:_.@\\\\-]{0,40}"),
        ParamKind::Container => re("[a-zA-Z0-9][a-zA-Z0-9_.-]{0,60}"),
        ParamKind::Path => re("/\\PC{0,80}"),
        ParamKind::Glob => ("[a-z?.\\[\\]]{0,10}", prop::collection::vec("\\*+[a-z.]{1,3}", 0..6))
            .prop_map(|(head, groups)| format!("x{head}{}", groups.concat()))
            .boxed(),
        ParamKind::Host => {
            prop_oneof![re(&dns), any::<std::net::IpAddr>().prop_map(|ip| ip.to_string()).boxed(),].boxed()
        }
        ParamKind::Port => (1u16..=u16::MAX).prop_map(|p| p.to_string()).boxed(),
        ParamKind::Url => (
            select(&["http", "https"][..]),
            re(&dns),
            prop::option::of(1u16..=u16::MAX),
            "(/[a-zA-Z0-9._~%-]{0,10}){0,3}(\\?[a-z=&]{0,10})?",
        )
            .prop_map(|(scheme, host, port, path)| match port {
                Some(port) => format!("{scheme}://{host}:{port}{path}"),
                None => format!("{scheme}://{host}{path}"),
            })
            .boxed(),
        ParamKind::Int { min, max } => (min..=max).prop_map(|n| n.to_string()).boxed(),
        ParamKind::Bool => {
            select(&["true", "yes", "1", "on", "false", "no", "0", "off"][..]).prop_map(str::to_owned).boxed()
        }
        ParamKind::Choice(options) => select(options).prop_map(str::to_owned).boxed(),
        ParamKind::Duration { max_secs } => (0..=max_secs)
            .prop_flat_map(|secs| {
                // The same length in whichever unit divides it.
                let mut forms = vec![format!("{secs}s"), format!("{secs}sec")];
                if secs % 60 == 0 {
                    forms.push(format!("{}m", secs / 60));
                }
                if secs % 3600 == 0 {
                    forms.push(format!("{}h", secs / 3600));
                }
                select(forms)
            })
            .boxed(),
        ParamKind::Text { max } => {
            "\\PC{0,60}".prop_filter("within the limit", move |s| s.len() <= max).boxed()
        }
        ParamKind::Packages => prop::collection::vec("[a-z0-9][a-z0-9+._:-]{0,20}", 1..8)
            .prop_map(|names| names.join(","))
            .boxed(),
        // Never a scanner scheme (`dir:`, `docker:`...): those names are refused on purpose.
        ParamKind::Image => (
            "img[a-z0-9._-]{0,12}(/[a-z0-9][a-z0-9._-]{0,10}){0,2}",
            prop::option::of("[a-zA-Z0-9_][a-zA-Z0-9._-]{0,12}"),
            prop::option::of("[0-9a-f]{8,64}"),
        )
            .prop_map(|(name, tag, digest)| {
                let mut image = name;
                if let Some(tag) = tag {
                    image = format!("{image}:{tag}");
                }
                if let Some(digest) = digest {
                    image = format!("{image}@sha256:{digest}");
                }
                image
            })
            .boxed(),
        ParamKind::Project => re("[a-z0-9_][a-z0-9_-]{0,40}"),
        ParamKind::SnapshotName => re("[a-zA-Z][a-zA-Z0-9_-]{0,39}"),
    }
}

/// A spec with parameters it accepts: every required one and some of the optional ones.
fn valid_request() -> impl Strategy<Value = (&'static OperationSpec, BTreeMap<String, String>)> {
    select(specs()).prop_flat_map(|spec| {
        let params: Vec<_> = spec
            .params
            .iter()
            .map(|p| {
                let required = p.required;
                (any::<bool>(), valid_value(p.kind))
                    .prop_map(move |(give, value)| (required || give).then(|| (p.name.to_owned(), value)))
            })
            .collect();
        (Just(spec), params.prop_map(|given| given.into_iter().flatten().collect()))
    })
}

/// The default or given value as `validate` sees it, for comparing its verdict.
fn raw<'a>(spec: &OperationSpec, params: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    params.get(name).map(String::as_str).or_else(|| spec.param(name).and_then(|p| p.default))
}

proptest! {
    #![proptest_config(config())]

    /// What the catalog declares is what validation accepts, and the result holds every given
    /// parameter and every default, typed by its kind.
    #[test]
    fn generated_valid_parameters_are_accepted((spec, params) in valid_request(), dry in any::<bool>()) {
        let dry_run = dry && spec.mutating;
        let validated = validate(spec.name, &params, dry_run);
        let validated = match validated {
            Ok(v) => v,
            Err(e) => return Err(TestCaseError::fail(format!("{} {params:?} refused: {e}", spec.name))),
        };
        prop_assert_eq!(validated.dry_run, dry_run);
        for p in spec.params {
            let expected = raw(spec, &params, p.name).map(|raw| p.kind.parse(raw));
            prop_assert_eq!(validated.params.get(p.name).cloned().map(Ok), expected, "{}", p.name);
        }
        let again = validate(spec.name, &params, dry_run).expect("validated once");
        prop_assert_eq!(again.params, validated.params);
    }

    /// Arbitrary keys and values against any operation name (catalogued or not): a verdict,
    /// never a panic, and a refusal that names the field at fault for the reason it gives.
    #[test]
    fn arbitrary_parameters_get_a_verdict_that_names_the_field(
        name in prop_oneof![3 => select(specs()).prop_map(|s| s.name.to_owned()), 1 => hostile_text()],
        params in prop::collection::btree_map(
            prop_oneof![2 => select(specs()).prop_flat_map(|s| select(s.params.iter().map(|p| p.name).chain(["x"]).collect::<Vec<_>>())).prop_map(str::to_owned), 1 => hostile_text()],
            hostile_text(),
            0..6,
        ),
        dry_run in any::<bool>(),
    ) {
        let Err(error) = validate(&name, &params, dry_run) else { return Ok(()) };
        let message = error.to_string();
        prop_assert!(!message.trim().is_empty());
        match &error {
            OpsError::UnknownOperation(n) => {
                prop_assert_eq!(n, &name);
                prop_assert!(find(&name).is_none());
            }
            OpsError::DryRunNotApplicable(op) => {
                prop_assert!(dry_run && !find(op).expect("catalogued").mutating);
            }
            OpsError::UnknownParam { op, param, .. } => {
                prop_assert!(params.contains_key(param));
                prop_assert!(find(op).expect("catalogued").param(param).is_none());
            }
            OpsError::MissingParam { op, param, .. } => {
                let spec = find(op).expect("catalogued");
                prop_assert!(spec.param(param).is_some_and(|p| p.required));
                prop_assert!(!params.contains_key(param));
                prop_assert!(message.contains(param.as_str()));
            }
            OpsError::InvalidParam { op, param, reason } => {
                let spec = find(op).expect("catalogued");
                let given = raw(spec, &params, param).expect("given or defaulted");
                prop_assert_eq!(spec.param(param).expect("declared").kind.parse(given), Err(reason.clone()));
                prop_assert!(!reason.trim().is_empty());
                let named = format!("invalid {param}");
                prop_assert!(message.contains(&named), "{}", message);
            }
        }
    }

    /// A control character anywhere in any value is refused for that parameter, whatever its
    /// kind: it would reach an argv or a person's terminal.
    #[test]
    fn a_control_character_in_any_parameter_is_refused_for_that_parameter(
        (spec, params) in valid_request().prop_filter("has a parameter", |(_, p)| !p.is_empty()),
        pick in any::<prop::sample::Index>(),
        control in prop_oneof![Just('\0'), Just('\n'), Just('\u{1b}'), Just('\u{7f}'), Just('\u{9b}')],
        at in any::<prop::sample::Index>(),
    ) {
        let mut params = params;
        let key = pick.get(&params.keys().cloned().collect::<Vec<_>>()).clone();
        let value = params.get_mut(&key).expect("picked from the keys");
        let mut cut = at.index(value.len() + 1);
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.insert(cut, control);
        match validate(spec.name, &params, false) {
            Err(OpsError::InvalidParam { param, reason, .. }) => {
                prop_assert_eq!(param, key);
                prop_assert!(reason.contains("control characters"), "{}", reason);
            }
            other => return Err(TestCaseError::fail(format!("{} {params:?}: {other:?}", spec.name))),
        }
    }

    /// Each kind on its own, against any text: values that pass hold no control character and
    /// cannot be read as an option by the program they are given to.
    #[test]
    fn accepted_values_are_never_options_or_controls(
        spec in select(specs()).prop_filter("has parameters", |s| !s.params.is_empty()),
        pick in any::<prop::sample::Index>(),
        input in hostile_text(),
    ) {
        let p = pick.get(spec.params);
        if let Ok(value) = p.kind.parse(&input) {
            prop_assert!(!input.chars().any(char::is_control));
            let option_safe = !matches!(p.kind, ParamKind::Text { .. } | ParamKind::Int { .. });
            match &value {
                Value::Text(text) => {
                    prop_assert_eq!(text, &input);
                    prop_assert!(!option_safe || !text.starts_with('-'), "{:?} {:?}", p.kind, text);
                }
                Value::List(items) => {
                    prop_assert!(items.iter().all(|i| !i.is_empty() && !i.starts_with('-')), "{:?}", items);
                }
                Value::Int(_) | Value::Bool(_) | Value::Duration(_) => {}
            }
            // Accepting is a function of the text alone.
            prop_assert_eq!(p.kind.parse(&input), Ok(value));
        }
    }
}
