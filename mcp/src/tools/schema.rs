//! JSON schemas: the host selector every job tool shares, and catalog operations turned into
//! tools.

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{Map, Value, json};
use tailops_ops::{OperationSpec, ParamKind, RiskTier};

/// An object schema from `properties` and `required`, refusing other properties.
pub fn object(properties: Value, required: &[&str]) -> Arc<JsonObject> {
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), properties);
    if !required.is_empty() {
        schema.insert("required".into(), json!(required));
    }
    schema.insert("additionalProperties".into(), json!(false));
    Arc::new(schema)
}

/// The selector properties of job tools (see `Args::selector`).
pub fn selector_properties() -> Map<String, Value> {
    let mut properties = Map::new();
    properties.insert("host".into(), json!({"type": "string", "description": "One host, by name."}));
    properties.insert(
        "hosts".into(),
        json!({"type": "array", "items": {"type": "string"}, "maxItems": 1000,
               "description": "Several hosts, by name."}),
    );
    properties.insert(
        "labels".into(),
        json!({"type": "object", "additionalProperties": {"type": "string"},
               "description": "Hosts carrying all these labels, e.g. {\"env\": \"prod\"}."}),
    );
    properties.insert(
        "all_hosts".into(),
        json!({"type": "boolean", "description": "Every host the bridge may see (say so explicitly)."}),
    );
    properties
}

pub const SELECTOR_ARGS: &[&str] = &["host", "hosts", "labels", "all_hosts"];

/// Arguments every job tool takes besides its selector.
pub const JOB_ARGS: &[&str] = &["reason", "timeout", "dry_run", "elevate", "queue_for"];

/// The schema of `queue_for`, shared by exec and every operation tool.
pub fn queue_for_schema() -> Value {
    json!({"type": "string", "description": "Wait this long for hosts that are offline (e.g. 1h, at most \
           24h): they run the job when they reconnect and are reported expired after it. By default an \
           offline host is reported unreachable at once."})
}

/// The argument name of an operation parameter. Two catalog names mean something else on a
/// tool: `host` (the fleet host a job runs on) and `timeout` (the job's deadline), so a
/// network check's target and its own timeout are exposed as `target` and `check_timeout`.
pub fn exposed(param: &str) -> &str {
    match param {
        "host" => "target",
        "timeout" => "check_timeout",
        other => other,
    }
}

/// The tool name of an operation: `service.restart` → `service_restart`.
pub fn tool_name(spec: &OperationSpec) -> String {
    spec.name.replace('.', "_")
}

fn param_schema(kind: ParamKind, help: &str, default: Option<&str>) -> Value {
    let mut schema = match kind {
        ParamKind::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        ParamKind::Bool => json!({"type": "boolean"}),
        ParamKind::Choice(choices) => json!({"type": "string", "enum": choices}),
        ParamKind::Port => json!({"type": "integer", "minimum": 1, "maximum": 65535}),
        ParamKind::Duration { max_secs } => json!({
            "type": "string",
            "description": format!(
                "{help} (a duration such as 30s, 5m or 1h30m; at most {})",
                humantime::format_duration(std::time::Duration::from_secs(max_secs))
            ),
        }),
        ParamKind::Path => json!({"type": "string", "pattern": "^/", "maxLength": 4096}),
        ParamKind::Url => json!({"type": "string", "pattern": "^https?://", "maxLength": 2048}),
        ParamKind::Packages => json!({
            "type": "string",
            "description": format!("{help} (comma-separated package names)"),
        }),
        ParamKind::Text { max } => json!({"type": "string", "maxLength": max}),
        ParamKind::Unit
        | ParamKind::Container
        | ParamKind::Glob
        | ParamKind::Host
        | ParamKind::Image
        | ParamKind::Project
        | ParamKind::SnapshotName => json!({"type": "string", "maxLength": 255}),
    };
    let object = schema.as_object_mut().expect("schemas are objects");
    object.entry("description").or_insert_with(|| json!(help));
    if let Some(default) = default {
        let default = match kind {
            ParamKind::Bool => json!(default == "true"),
            ParamKind::Int { .. } | ParamKind::Port => {
                default.parse::<i64>().map_or_else(|_| json!(default), |n| json!(n))
            }
            _ => json!(default),
        };
        object.insert("default".into(), default);
    }
    schema
}

/// The tool for one catalog operation. Observe-tier operations run at once; the others create
/// a job that, for the default bridge role, waits for a human's approval.
pub fn operation_tool(spec: &'static OperationSpec) -> Tool {
    let mut properties = selector_properties();
    let mut required = Vec::new();
    for p in spec.params {
        properties.insert(exposed(p.name).to_owned(), param_schema(p.kind, p.help, p.default));
        if p.required {
            required.push(exposed(p.name));
        }
    }
    if spec.mutating {
        properties.insert(
            "dry_run".into(),
            json!({"type": "boolean", "default": false,
                   "description": "Say exactly what would run on each host, and change nothing."}),
        );
    }
    if spec.reads_files() {
        properties.insert(
            "elevate".into(),
            json!({"type": "boolean", "default": false,
                   "description": "Read beyond the host's observe roots (/var/log by default). This \
                                   needs a human's approval: the job waits and returns its id; say \
                                   why in reason. Key material stays unreadable either way."}),
        );
    }
    properties.insert(
        "reason".into(),
        json!({"type": "string", "maxLength": 500, "description": "Why this is needed; shown to a human approver."}),
    );
    properties.insert(
        "timeout".into(),
        json!({"type": "string", "description": "How long the job may run on each host (default 30s), e.g. 2m."}),
    );
    properties.insert("queue_for".into(), queue_for_schema());
    let note = match spec.tier {
        RiskTier::Observe => "Read-only; runs at once.",
        RiskTier::Control | RiskTier::Admin if spec.mutating => {
            "Changes hosts: unless the bridge's role allows it outright, this creates a job that waits \
             for a human's approval and returns its id; follow it with wait_job. Try dry_run first."
        }
        RiskTier::Control | RiskTier::Admin => "Needs a human's approval unless the bridge's role allows it.",
    };
    let description = format!(
        "{} ({} tier, operation {}). Pick hosts with host, hosts or labels. {note}",
        spec.summary,
        spec.tier.name(),
        spec.name
    );
    let annotations = ToolAnnotations::with_title(spec.summary)
        .read_only(!spec.mutating)
        .destructive(spec.destructive())
        .idempotent(spec.idempotent())
        .open_world(spec.reaches_outside());
    // Which of host/hosts/labels is needed is checked by the bridge: schema combinators
    // (anyOf/oneOf) are read unevenly by clients.
    Tool::new(tool_name(spec), description, object(Value::Object(properties), &required))
        .with_annotations(annotations)
}
