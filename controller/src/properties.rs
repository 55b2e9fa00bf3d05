//! Property tests for what the controller reads from others: its configuration file, job
//! requests from principals, and samples and facts from agents. Each gets generated input,
//! hostile and valid; none may panic, and every refusal must say what was wrong.
//!
//! `PROPTEST_CASES=N` runs N cases per property instead of the numbers below.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tailops_pki::{PrincipalId, PrincipalKind};
use tailops_proto::text::{find_hidden, is_hidden};
use tailops_proto::v1::{self, job_action};

use crate::auth::{Principal, Role, Tier};
use crate::config::{ControllerConfig, Limits};
use crate::jobs::{
    JobError, JobRequest, MAX_ARGV_ELEMENTS, MAX_PROCESS_LIST, OBSERVE_MAX_FOLLOW, OBSERVE_MAX_OUTPUT_CAP,
};
use crate::monitoring::ingest::{
    self, IngestError, MAX_FACT_KEY, MAX_FACT_VALUE, MAX_FACTS, MAX_SAMPLES_PER_BATCH, clean_text,
    validate_facts,
};
use crate::store::Store;

fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    // `PROPTEST_CASES`, when set, is already in the default.
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { default.cases } else { cases };
    // No regression files in the source tree: a case worth keeping becomes a unit test.
    ProptestConfig { cases, failure_persistence: None, ..default }
}

/// Text as a peer could send it: any characters, controls and format characters often,
/// sometimes long.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        3 => "[a-z0-9._=/-]{0,16}",
        2 => "[a-z\u{0}-\u{1f}\u{7f}\u{9b}\u{200b}\u{202e}\u{2066}\u{feff}\u{e0041} \t\n]{0,16}",
        1 => (any::<char>(), 0usize..3000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

/// A number that is usually anything and sometimes right at an interesting edge.
fn near(edges: Vec<u64>) -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => any::<u64>(),
        3 => (prop::sample::select(edges), -2i64..=2).prop_map(|(e, d)| e.saturating_add_signed(d)),
    ]
}

// ----- controller.toml -----

const BASE_CONFIG: &str = r#"
trust_domain = "tailops.test"
listen = "127.0.0.1:7443"
advertise = ["controller.test", "10.0.0.1"]
"#;

/// The base configuration with every default written out, as `init` writes it.
fn full_config() -> toml::Table {
    let config: ControllerConfig = toml::from_str(BASE_CONFIG).expect("base config");
    toml::from_str(&toml::to_string(&config).expect("serializable")).expect("a table")
}

/// Every key `init` would write, by section ("" for the top level).
fn config_keys() -> Vec<(String, String)> {
    let table = full_config();
    let mut keys = Vec::new();
    for (name, value) in &table {
        match value {
            toml::Value::Table(section) => {
                for (key, value) in section {
                    match value {
                        toml::Value::Table(sub) => {
                            keys.extend(sub.keys().map(|k| (format!("{name}.{key}"), k.clone())));
                        }
                        _ => keys.push((name.clone(), key.clone())),
                    }
                }
            }
            _ => keys.push((String::new(), name.clone())),
        }
    }
    keys
}

fn toml_value() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        4 => any::<i64>().prop_map(toml::Value::Integer),
        2 => (0i64..=i64::MAX).prop_map(toml::Value::Integer),
        2 => near(vec![0, 1, 1 << 32, 1 << 53, 2_562_047_788_015, i64::MAX as u64])
            .prop_map(|n| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))),
        1 => any::<f64>().prop_map(toml::Value::Float),
        1 => any::<bool>().prop_map(toml::Value::Boolean),
        2 => hostile_text().prop_map(toml::Value::String),
        1 => prop::collection::vec(any::<i64>(), 0..3)
            .prop_map(|v| toml::Value::Array(v.into_iter().map(toml::Value::Integer).collect())),
    ]
}

/// Whatever was loaded, the values derived from it do not panic, and a configuration that
/// passes validation yields deadlines that can be computed.
fn derived_values_are_usable(config: &ControllerConfig) -> Result<(), TestCaseError> {
    let heartbeat = config.heartbeat_interval();
    prop_assert!(heartbeat >= Duration::from_millis(100));
    prop_assert!(config.offline_after() >= heartbeat);
    prop_assert!(config.public_url(7443).starts_with("https://"));
    prop_assert!(config.monitoring.raw_retention_ms() >= 0);
    if config.network.validate().is_ok() {
        let network = &config.network;
        for secs in [
            network.tls_handshake_timeout_secs,
            network.unauthenticated_timeout_secs,
            network.http2_keepalive_interval_secs,
            network.http2_keepalive_timeout_secs,
            network.max_connection_age_secs,
            network.max_connection_age_grace_secs,
        ] {
            prop_assert!(Instant::now().checked_add(Duration::from_secs(secs)).is_some(), "{}", secs);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(2000))]

    /// TOML-ish text made of the file's own sections and keys: a configuration or an error
    /// that says where, never a panic.
    #[test]
    fn any_config_text_loads_or_says_where_it_is_wrong(
        lines in prop::collection::vec(
            prop_oneof![
                2 => prop::sample::select(config_keys())
                    .prop_flat_map(|(_, key)| (Just(key), toml_value()))
                    .prop_map(|(key, value)| format!("{key} = {value}")),
                1 => prop::sample::select(config_keys()).prop_map(|(section, _)| format!("[{section}]")),
                1 => hostile_text(),
            ],
            0..8,
        ),
    ) {
        let text = format!("{BASE_CONFIG}\n{}", lines.join("\n"));
        match toml::from_str::<ControllerConfig>(&text) {
            Ok(config) => derived_values_are_usable(&config)?,
            Err(e) => {
                let message = e.to_string();
                prop_assert!(!message.trim().is_empty());
                if let Some(span) = e.span() {
                    prop_assert!(span.end <= text.len(), "{:?} beyond the text", span);
                }
            }
        }
    }

    /// One known key set to any value: accepted with usable derived values, or refused with a
    /// message that names the key.
    #[test]
    fn any_value_for_a_known_key_is_loaded_or_refused_by_name(
        (section, key) in prop::sample::select(config_keys()),
        value in toml_value(),
    ) {
        let mut table = full_config();
        let mut place = &mut table;
        for part in section.split('.').filter(|p| !p.is_empty()) {
            place = place.get_mut(part).and_then(toml::Value::as_table_mut).expect("a section");
        }
        place.insert(key.clone(), value);
        let text = toml::to_string(&table).expect("serializable");
        match toml::from_str::<ControllerConfig>(&text) {
            Ok(config) => derived_values_are_usable(&config)?,
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.contains(&key), "{} not named in: {}", key, message);
            }
        }
    }
}

// ----- job requests -----

fn principal(role: &'static Role) -> Principal {
    Principal {
        id: PrincipalId::new("tailops.test", PrincipalKind::User, "someone").expect("principal id"),
        serial: "01".into(),
        not_after_ms: i64::MAX,
        role: Some(role),
        scope: None,
        client: None,
    }
}

fn argv() -> impl Strategy<Value = Vec<String>> {
    let limit = Limits::default().max_argv_bytes as u64;
    prop_oneof![
        6 => prop::collection::vec(hostile_text(), 0..6),
        1 => near(vec![MAX_ARGV_ELEMENTS as u64]).prop_map(|n| vec!["x".to_owned(); (n % 8192) as usize]),
        1 => near(vec![limit]).prop_map(|n| vec!["y".repeat((n % (1 << 20)) as usize)]),
    ]
}

fn action() -> impl Strategy<Value = Option<v1::JobAction>> {
    let kind = prop_oneof![
        argv().prop_map(|argv| job_action::Kind::Exec(v1::ExecAction { argv })),
        (any::<i32>(), near(vec![u64::from(MAX_PROCESS_LIST)])).prop_map(|(sort, limit)| {
            job_action::Kind::ProcessList(v1::ProcessListAction {
                sort,
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            })
        }),
        (
            prop_oneof![
                3 => prop::sample::select(tailops_ops::catalog().map(|s| s.name).collect::<Vec<_>>())
                    .prop_map(str::to_owned),
                1 => hostile_text(),
            ],
            prop::collection::btree_map(
                prop_oneof![
                    Just("follow".to_owned()),
                    Just("unit".to_owned()),
                    Just("path".to_owned()),
                    hostile_text()
                ],
                prop_oneof![Just("true".to_owned()), Just("/var/log/syslog".to_owned()), hostile_text()],
                0..4,
            ),
            any::<bool>(),
        )
            .prop_map(|(name, params, dry_run)| {
                job_action::Kind::Operation(v1::OperationAction { name, params, dry_run })
            }),
    ];
    prop::option::weighted(0.95, (prop::option::weighted(0.95, kind), any::<bool>()))
        .prop_map(|action| action.map(|(kind, elevated)| v1::JobAction { kind, elevated }))
}

fn run_job_request() -> impl Strategy<Value = v1::RunJobRequest> {
    let selector = prop::option::weighted(
        0.9,
        (
            any::<bool>(),
            prop::collection::btree_map(hostile_text(), hostile_text(), 0..3),
            prop::collection::vec(hostile_text(), 0..3),
        )
            .prop_map(|(all, labels, hosts)| v1::HostSelector { all, labels, hosts }),
    );
    let limits = Limits::default();
    (
        selector,
        action(),
        near(vec![0, limits.max_job_timeout_secs * 1000, OBSERVE_MAX_FOLLOW.as_secs() * 1000]),
        any::<u32>(),
        near(vec![0, OBSERVE_MAX_OUTPUT_CAP, limits.max_output_cap_bytes]),
        prop_oneof![3 => hostile_text(), 1 => near(vec![1024]).prop_map(|n| "r".repeat((n % 4096) as usize))],
        near(vec![0, limits.max_queue_for_secs * 1000]),
    )
        .prop_map(
            |(selector, action, timeout_ms, concurrency, output_cap_bytes, reason, queue_for_ms)| {
                v1::RunJobRequest {
                    selector,
                    action,
                    timeout_ms,
                    concurrency,
                    output_cap_bytes,
                    reason,
                    queue_for_ms,
                }
            },
        )
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        3 => Just(Limits::default()),
        1 => (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<usize>(), any::<u64>()).prop_map(
            |(default_timeout, max_timeout, default_cap, max_cap, argv, max_queue)| Limits {
                default_job_timeout_secs: default_timeout,
                max_job_timeout_secs: max_timeout,
                default_output_cap_bytes: default_cap,
                max_output_cap_bytes: max_cap,
                max_argv_bytes: argv,
                max_join_token_uses: 1,
                max_queue_for_secs: max_queue,
                max_live_output_bytes: Limits::default().max_live_output_bytes,
            }
        ),
    ]
}

proptest! {
    #![proptest_config(config(2000))]

    /// Whatever a principal sends: refused as an invalid argument with a reason, or accepted
    /// only within every limit the request is checked against.
    #[test]
    fn job_requests_are_refused_with_a_reason_or_within_every_limit(
        role in (0..crate::auth::roles::ROLES.len()).prop_map(|i| &crate::auth::roles::ROLES[i]),
        request in run_job_request(),
        limits in limits(),
    ) {
        let requester = principal(role);
        let control = requester.holds(Tier::Control);
        let sent = request.clone();
        match JobRequest::from_wire(requester, request, &limits) {
            Err(JobError::InvalidArgument(message)) => {
                prop_assert!(!message.trim().is_empty());
                prop_assert!(find_hidden(&message, &['\n']).is_none(), "{:?}", message);
                // The argument at fault is named with the character's place in it.
                if let Some(rest) = message.strip_prefix("argv[") {
                    let Some(job_action::Kind::Exec(exec)) = sent.action.and_then(|a| a.kind) else {
                        return Err(TestCaseError::fail("argv named for a non-exec action"));
                    };
                    let index: usize = rest.split(']').next().and_then(|i| i.parse().ok()).expect("an index");
                    let at: usize = message.split(" at byte ").nth(1)
                        .and_then(|r| r.split(':').next()).and_then(|b| b.parse().ok()).expect("a byte offset");
                    prop_assert_eq!(find_hidden(&exec.argv[index], &['\t', '\n']).map(|(a, _)| a), Some(at));
                }
                let status = tonic::Status::from(JobError::InvalidArgument(message));
                prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
            }
            Err(other) => return Err(TestCaseError::fail(format!("not an invalid argument: {other:?}"))),
            Ok(job) => {
                let selector = &job.selector;
                prop_assert!(selector.all || !selector.labels.is_empty() || !selector.hosts.is_empty());
                prop_assert!(job.timeout <= Duration::from_secs(limits.max_job_timeout_secs));
                prop_assert!(job.queue_for <= Duration::from_secs(limits.max_queue_for_secs));
                let max_cap = if control { limits.max_output_cap_bytes } else {
                    limits.max_output_cap_bytes.min(OBSERVE_MAX_OUTPUT_CAP)
                };
                prop_assert!(job.output_cap <= max_cap);
                prop_assert!(job.reason.len() <= 1024 && find_hidden(&job.reason, &[]).is_none());
                match &job.action.kind {
                    Some(job_action::Kind::Exec(exec)) => {
                        prop_assert!(!exec.argv.is_empty() && !exec.argv[0].is_empty());
                        prop_assert!(exec.argv.len() <= MAX_ARGV_ELEMENTS);
                        prop_assert!(exec.argv.iter().map(String::len).sum::<usize>() <= limits.max_argv_bytes);
                        prop_assert!(exec.argv.iter().all(|a| find_hidden(a, &['\t', '\n']).is_none()));
                    }
                    Some(job_action::Kind::ProcessList(list)) => prop_assert!(list.limit <= MAX_PROCESS_LIST),
                    Some(job_action::Kind::Operation(op)) => {
                        prop_assert!(tailops_ops::validate(&op.name, &op.params, op.dry_run).is_ok());
                        let follows = op.params.get("follow").is_some_and(|f| matches!(f.as_str(), "true" | "yes" | "1" | "on"));
                        prop_assert!(control || !follows || job.timeout <= OBSERVE_MAX_FOLLOW);
                    }
                    None => return Err(TestCaseError::fail("accepted without an action")),
                }
            }
        }
    }
}

// ----- samples and facts from agents -----

fn metric_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => 0.0..200.0f64,
        1 => any::<f64>(),
        1 => prop::sample::select(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, -1.0, f64::MAX][..]),
    ]
}

fn sample(now: i64) -> impl Strategy<Value = v1::MetricSample> {
    let at =
        prop_oneof![3 => now.saturating_sub(3 * 86_400_000)..now.saturating_add(600_000), 1 => any::<i64>()];
    let disk = (hostile_text(), hostile_text(), any::<u64>(), any::<u64>()).prop_map(
        |(mount, filesystem, used_bytes, total_bytes)| v1::DiskUsage {
            mount,
            filesystem,
            used_bytes,
            total_bytes,
        },
    );
    let interface = (hostile_text(), metric_f64(), metric_f64()).prop_map(
        |(name, rx_bytes_per_sec, tx_bytes_per_sec)| v1::InterfaceRate {
            name,
            rx_bytes_per_sec,
            tx_bytes_per_sec,
        },
    );
    (
        at,
        prop::collection::vec(metric_f64(), 6),
        prop::collection::vec(prop_oneof![0u64..1000, any::<u64>()], 4),
        prop::collection::vec(disk, 0..3),
        prop::collection::vec(interface, 0..3),
    )
        .prop_map(|(at_ms, f, u, disks, interfaces)| v1::MetricSample {
            at_ms,
            cpu_percent: f[0],
            load1: f[1],
            load5: f[2],
            load15: f[3],
            net_rx_bytes_per_sec: f[4],
            net_tx_bytes_per_sec: f[5],
            mem_total_bytes: u[0],
            mem_used_bytes: u[1],
            swap_total_bytes: u[2],
            swap_used_bytes: u[3],
            disks,
            interfaces,
            ..Default::default()
        })
}

const NOW: i64 = 1_800_000_000_000;

fn batch() -> impl Strategy<Value = (v1::MetricsBatch, i64, i64)> {
    let now = prop_oneof![4 => Just(NOW), 1 => any::<i64>()];
    let retention = prop_oneof![4 => Just(48 * 3_600_000), 1 => any::<i64>()];
    (now, retention).prop_flat_map(|(now, retention)| {
        let samples = prop_oneof![
            8 => prop::collection::vec(sample(now), 0..12),
            1 => (sample(now), near(vec![MAX_SAMPLES_PER_BATCH as u64]))
                .prop_map(|(s, n)| vec![s; usize::try_from(n % 4096).unwrap_or(0)]),
        ];
        (samples.prop_map(|samples| v1::MetricsBatch { samples }), Just(now), Just(retention))
    })
}

/// What `ingest::validate` promises of every sample it keeps.
fn usable(s: &v1::MetricSample, now: i64, retention: i64) -> bool {
    let plain = [s.load1, s.load5, s.load15, s.net_rx_bytes_per_sec, s.net_tx_bytes_per_sec];
    s.at_ms > now.saturating_sub(retention)
        && s.at_ms <= now.saturating_add(5 * 60_000)
        && (0.0..=100.0).contains(&s.cpu_percent)
        && plain.iter().all(|v| v.is_finite() && *v >= 0.0)
        && s.mem_used_bytes <= s.mem_total_bytes
        && s.swap_used_bytes <= s.swap_total_bytes
        && s.disks.iter().all(|d| d.used_bytes <= d.total_bytes && d.mount.len() <= 1024)
        && s.interfaces.iter().all(|i| i.rx_bytes_per_sec.is_finite() && i.name.len() <= 1024)
}

fn facts_update() -> impl Strategy<Value = v1::FactsUpdate> {
    let key = prop_oneof![4 => "[a-z][a-z0-9._]{0,12}", 2 => hostile_text(), 1 => near(vec![MAX_FACT_KEY as u64]).prop_map(|n| "k".repeat((n % 1024) as usize))];
    let value = prop_oneof![4 => hostile_text(), 1 => near(vec![MAX_FACT_VALUE as u64]).prop_map(|n| "v".repeat((n % 16384) as usize))];
    (any::<bool>(), prop::collection::btree_map(key.clone(), value, 0..6), prop::collection::vec(key, 0..3))
        .prop_map(|(full, set, removed)| v1::FactsUpdate { full, set, removed })
}

proptest! {
    #![proptest_config(config(2000))]

    /// Kept samples are in the window, possible, clamped, in time order and one per instant;
    /// a batch is refused only when it is too large or nothing in it is usable.
    #[test]
    fn samples_are_kept_only_when_usable((batch, now, retention) in batch()) {
        let sent = batch.samples.clone();
        match ingest::validate(batch, now, retention) {
            Ok(kept) => {
                prop_assert!(kept.len() <= sent.len());
                prop_assert_eq!(kept.is_empty(), sent.is_empty());
                prop_assert!(kept.iter().all(|s| usable(s, now, retention)), "{:?}", kept);
                prop_assert!(kept.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
            }
            Err(IngestError::Invalid(message)) => {
                prop_assert!(!message.trim().is_empty());
                prop_assert!(sent.len() > MAX_SAMPLES_PER_BATCH || message.contains("none of"), "{}", message);
            }
            Err(other) => return Err(TestCaseError::fail(format!("{other}"))),
        }
    }

    /// Host text is bounded, cut at a character, and hides nothing; what remains is the start
    /// of the original with hidden characters shown as '?'.
    #[test]
    fn host_text_is_cut_and_cleaned(raw in hostile_text(), max in prop_oneof![0usize..300, Just(usize::MAX)]) {
        let clean = clean_text(&raw, max);
        prop_assert!(clean.len() <= max);
        prop_assert!(!clean.chars().any(is_hidden));
        let kept: Vec<char> = raw.chars().take(clean.chars().count()).collect();
        prop_assert!(clean.chars().zip(&kept).all(|(c, r)| c == *r || (c == '?' && is_hidden(*r))));
        let kept_bytes: usize = kept.iter().map(|c| c.len_utf8()).sum();
        if let Some(next) = raw[kept_bytes..].chars().next() {
            prop_assert!(kept_bytes + next.len_utf8() > max, "cut too early");
        }
    }

    /// A facts update is refused with a reason that hides nothing, or comes back with every
    /// key sound and every value bounded and cleaned.
    #[test]
    fn facts_are_refused_or_come_back_clean(update in facts_update()) {
        let sent = update.clone();
        match validate_facts(update) {
            Ok(clean) => {
                prop_assert_eq!(clean.full, sent.full);
                let mut removed = sent.removed.clone();
                removed.sort();
                removed.dedup();
                prop_assert_eq!(&clean.removed, &removed);
                prop_assert!(clean.set.len() + clean.removed.len() <= MAX_FACTS);
                for key in clean.set.keys().chain(&clean.removed) {
                    prop_assert!(!key.is_empty() && key.len() <= MAX_FACT_KEY && !key.chars().any(is_hidden));
                }
                for (key, value) in &clean.set {
                    let raw = &sent.set[key];
                    prop_assert!(value.len() <= MAX_FACT_VALUE && !value.chars().any(is_hidden));
                    prop_assert_eq!(value.chars().count(), raw.chars().count());
                }
                prop_assert!(!clean.set.keys().any(|k| clean.removed.contains(k)));
            }
            Err(IngestError::Invalid(message)) => {
                prop_assert!(!message.trim().is_empty());
                prop_assert!(!message.chars().any(is_hidden), "{:?}", message);
            }
            Err(other) => return Err(TestCaseError::fail(format!("{other}"))),
        }
    }
}

async fn store_with_host() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("t.db")).await.expect("open");
    sqlx::query("INSERT INTO hosts (id, name, enrolled_at) VALUES ('h1', 'web1', 0)")
        .execute(store.writer())
        .await
        .expect("host");
    (dir, store)
}

/// Updates over a handful of keys, so that they overlap, replace and remove each other.
fn facts_sequence() -> impl Strategy<Value = Vec<v1::FactsUpdate>> {
    let key =
        prop::sample::select(&["os", "kernel", "unit.a", "unit.b", "cpu.cores"][..]).prop_map(str::to_owned);
    let value = prop_oneof![
        prop::sample::select(&["1", "2", "loaded/failed/failed"][..]).prop_map(str::to_owned),
        hostile_text()
    ];
    let update = (
        any::<bool>(),
        prop::collection::btree_map(key.clone(), value, 0..4),
        prop::collection::vec(key, 0..3),
    )
        .prop_map(|(full, set, removed)| v1::FactsUpdate { full, set, removed });
    prop::collection::vec(update, 1..5)
}

proptest! {
    // Each case opens a SQLite database in a temporary directory: far fewer cases.
    #![proptest_config(config(48))]

    /// Applied updates leave exactly the facts they describe: a full update replaces them all,
    /// a partial one sets and removes keys; what is stored was cleaned first.
    #[test]
    fn stored_facts_follow_the_updates(updates in facts_sequence()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let (_dir, store) = store_with_host().await;
            let mut model: BTreeMap<String, String> = BTreeMap::new();
            for (at, update) in (1..).zip(updates) {
                let clean = match validate_facts(update) {
                    Ok(clean) => clean,
                    Err(e) => {
                        prop_assert!(!e.to_string().is_empty());
                        continue;
                    }
                };
                let before = model.clone();
                if clean.full {
                    model.clone_from(&clean.set);
                } else {
                    model.extend(clean.set.clone());
                    for key in &clean.removed {
                        model.remove(key);
                    }
                }
                let changed = model.iter().filter(|(k, v)| before.get(*k) != Some(v)).count()
                    + before.keys().filter(|k| !model.contains_key(*k)).count();
                let applied = store.apply_facts("h1", &clean, at).await.expect("apply");
                prop_assert_eq!(applied.changed, changed);
                let stored: BTreeMap<String, String> =
                    store.facts("h1").await.expect("facts").into_iter().map(|f| (f.key, f.value)).collect();
                prop_assert_eq!(&stored, &model);
            }
            Ok(())
        })?;
    }
}

// ----- cases the properties found, kept as plain tests -----

#[test]
fn huge_retention_or_clock_values_do_not_overflow_the_sample_window() {
    let sample = v1::MetricSample { at_ms: 0, mem_total_bytes: 1, ..Default::default() };
    let batch = v1::MetricsBatch { samples: vec![sample] };
    assert!(ingest::validate(batch.clone(), i64::MIN, 1).is_err());
    assert!(ingest::validate(batch, 0, i64::MIN).is_err(), "a negative retention keeps nothing");
    let config: ControllerConfig =
        toml::from_str(&format!("{BASE_CONFIG}\n[monitoring]\nraw_retention_hours = 3000000000000"))
            .expect("toml");
    assert_eq!(config.monitoring.raw_retention_ms(), i64::MAX);
}

#[test]
fn a_long_heartbeat_times_many_missed_beats_saturates() {
    let config: ControllerConfig = toml::from_str(&format!(
        "{BASE_CONFIG}\n[timing]\nheartbeat_interval_ms = 9223372036854775807\noffline_after_missed = 4294967295"
    ))
    .expect("toml");
    assert_eq!(config.offline_after(), Duration::MAX);
}

#[test]
fn network_timeouts_too_long_for_a_deadline_are_refused_by_name() {
    let config: ControllerConfig = toml::from_str(&format!(
        "{BASE_CONFIG}\n[network]\nunauthenticated_timeout_secs = 9223372036854775807"
    ))
    .expect("toml");
    let error = config.network.validate().expect_err("refused");
    assert!(error.contains("unauthenticated_timeout_secs"), "{error}");
}

#[test]
fn a_fact_both_set_and_removed_is_refused_and_repeated_removals_count_once() {
    let both = v1::FactsUpdate {
        full: false,
        set: [("os".to_owned(), "linux".to_owned())].into(),
        removed: vec!["os".into()],
    };
    let error = validate_facts(both).expect_err("ambiguous");
    assert!(error.to_string().contains("both set and removed"), "{error}");
    let twice =
        v1::FactsUpdate { full: false, set: BTreeMap::new(), removed: vec!["os".into(), "os".into()] };
    assert_eq!(validate_facts(twice).expect("valid").removed, ["os"]);
}
