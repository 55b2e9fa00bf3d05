//! The bridge's tools: a fixed set for the fleet, jobs and audit, plus one tool per operation of
//! the catalog (`service_restart`, `file_tail`, ...) whose schema and annotations are derived
//! from it, so they cannot drift from what the controller and agents accept.

mod args;
mod fleet;
mod jobs;
mod schema;

use std::collections::HashMap;
use std::sync::Arc;

use rmcp::model::{
    CallToolResult, ContentBlock, ProgressNotificationParam, ProgressToken, Tool, ToolAnnotations,
};
use rmcp::{Peer, RoleServer};
use serde_json::Value;
use tailops_ops::OperationSpec;
use tokio_util::sync::CancellationToken;

use crate::controller::{ClientTag, Controller};
pub use args::Args;

/// Bounds that keep results small enough for a model's context.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest text a tool result may have, in characters.
    pub max_result_chars: usize,
    /// Most rows of any list in a result.
    pub max_rows: usize,
    /// Longest `wait_job` / direct-run wait.
    pub max_wait: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_result_chars: 16_000, max_rows: 200, max_wait: std::time::Duration::from_secs(300) }
    }
}

/// Everything a tool call needs: the controller, who the call is for, how to report progress
/// and the client's cancellation.
#[derive(Debug, Clone)]
pub struct Call {
    pub controller: Controller,
    pub client: ClientTag,
    pub limits: Limits,
    pub cancel: CancellationToken,
    pub progress: Option<(Peer<RoleServer>, ProgressToken)>,
}

impl Call {
    /// Sends a progress notification when the client asked for them; a lost notification
    /// changes nothing.
    pub async fn progress(&self, done: u64, total: Option<u64>, message: impl Into<String>) {
        if let Some((peer, token)) = &self.progress {
            #[allow(clippy::cast_precision_loss)]
            let mut param = ProgressNotificationParam::new(token.clone(), done as f64);
            param.total = total.map(|t| t as f64);
            param.message = Some(message.into());
            // A slow client must not hold up the job's deadline or cancellation.
            match tokio::time::timeout(std::time::Duration::from_secs(1), peer.notify_progress(param)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "progress notification not delivered"),
                Err(_) => tracing::debug!("progress notification dropped: the client is slow"),
            }
        }
    }

    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        Controller::request(message, &self.client)
    }
}

/// Why a tool call failed, said so that the assistant (and the person behind it) can act.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{}", controller_message(.0))]
    Controller(#[from] tonic::Status),
    #[error("the call was cancelled{0}")]
    Cancelled(String),
}

fn controller_message(status: &tonic::Status) -> String {
    let hint = match status.code() {
        tonic::Code::PermissionDenied => {
            " (the bridge's role or scope does not allow this; a human can run it, or widen the bridge's \
             role with `tailopsctl bridges set-role`)"
        }
        tonic::Code::NotFound => " (list_hosts shows the hosts this bridge can see)",
        tonic::Code::Unavailable => " (is the controller running and reachable?)",
        tonic::Code::ResourceExhausted => " (rate limited: wait before retrying)",
        _ => "",
    };
    format!("the controller refused: {}{hint}", status.message())
}

type ToolResult = Result<Value, ToolError>;

#[derive(Debug, Clone, Copy)]
enum Handler {
    Fleet(fleet::FleetTool),
    Jobs(jobs::JobTool),
    Operation(&'static OperationSpec),
}

/// All tools, built once at start.
#[derive(Debug)]
pub struct ToolSet {
    tools: Vec<Tool>,
    handlers: HashMap<String, Handler>,
}

impl ToolSet {
    pub fn new() -> Arc<Self> {
        let mut set = Self { tools: Vec::new(), handlers: HashMap::new() };
        for (tool, handler) in fleet::tools() {
            set.add(tool, Handler::Fleet(handler));
        }
        for (tool, handler) in jobs::tools() {
            set.add(tool, Handler::Jobs(handler));
        }
        for spec in tailops_ops::catalog() {
            set.add(schema::operation_tool(spec), Handler::Operation(spec));
        }
        Arc::new(set)
    }

    fn add(&mut self, tool: Tool, handler: Handler) {
        let previous = self.handlers.insert(tool.name.to_string(), handler);
        assert!(previous.is_none(), "tool {} is defined twice", tool.name);
        self.tools.push(tool);
    }

    /// A host as `get_host` describes it (the `tailops://hosts/{name}` resource).
    pub async fn host_document(&self, host: &str, call: &Call) -> Result<Value, ToolError> {
        let mut arguments = rmcp::model::JsonObject::new();
        arguments.insert("host".into(), Value::String(host.to_owned()));
        fleet::call(fleet::FleetTool::GetHost, &Args::new(Some(arguments)), call).await
    }

    /// The names of the hosts the bridge can see.
    pub async fn host_names(&self, call: &Call) -> Result<Vec<String>, ToolError> {
        let selector = tailops_proto::v1::HostSelector { all: true, ..Default::default() };
        let request = call.request(tailops_proto::v1::ListHostsRequest { selector: Some(selector) });
        let hosts = call.controller.fleet().list_hosts(request).await?.into_inner().hosts;
        Ok(hosts.into_iter().map(|h| h.name).collect())
    }

    pub fn list(&self) -> &[Tool] {
        &self.tools
    }

    /// Runs a tool. `None` when there is no such tool (a protocol error, not a tool error).
    pub async fn call(&self, name: &str, arguments: Args, call: &Call) -> Option<CallToolResult> {
        let handler = *self.handlers.get(name)?;
        let result = match handler {
            Handler::Fleet(tool) => fleet::call(tool, &arguments, call).await,
            Handler::Jobs(tool) => jobs::call(tool, &arguments, call).await,
            Handler::Operation(spec) => jobs::operation(spec, &arguments, call).await,
        };
        Some(match result {
            Ok(value) => shaped(value, call.limits),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(e.to_string())]),
        })
    }
}

/// The result as structured content and, for clients that read only text, the same JSON as
/// text. Past the size limit the structure is reduced to its small top-level fields (state,
/// summary, next step...) and the text to those plus as much of the whole as fits, saying how
/// to narrow the request.
fn shaped(mut value: Value, limits: Limits) -> CallToolResult {
    reveal_format_characters(&mut value);
    let text = serde_json::to_string(&value).unwrap_or_default();
    let length = text.chars().count();
    if length <= limits.max_result_chars {
        let mut result = CallToolResult::structured(value);
        result.content = vec![ContentBlock::text(text)];
        return result;
    }
    let mut head = serde_json::Map::new();
    if let Value::Object(fields) = &value {
        for (key, field) in fields {
            if !field.is_array() && serde_json::to_string(field).is_ok_and(|f| f.len() <= 600) {
                head.insert(key.clone(), field.clone());
            }
        }
    }
    head.insert("truncated".into(), Value::Bool(true));
    head.insert(
        "note".into(),
        Value::String(format!(
            "the result has {length} characters, over this bridge's limit of {}; the start of it \
             follows as text. Narrow the request: fewer hosts, a shorter time range, a smaller \
             limit or a grep",
            limits.max_result_chars
        )),
    );
    let head = Value::Object(head);
    let head_text = serde_json::to_string(&head).unwrap_or_default();
    let room = limits.max_result_chars.saturating_sub(head_text.chars().count());
    let start: String = text.chars().take(room).collect();
    let mut result = CallToolResult::structured(head);
    result.content = vec![ContentBlock::text(head_text), ContentBlock::text(start)];
    result
}

/// Host-provided text reaches the model and, through the client, a person. JSON already
/// escapes control characters; bidirectional overrides, zero-width and tag characters it passes
/// through unchanged, and they can hide or reorder text (or smuggle invisible instructions), so
/// they are written as visible escapes.
fn reveal_format_characters(value: &mut Value) {
    match value {
        Value::String(s) if s.chars().any(|c| tailops_proto::text::is_hidden(c) && !c.is_control()) => {
            *s = s
                .chars()
                .map(|c| {
                    if tailops_proto::text::is_hidden(c) && !c.is_control() {
                        format!("\\u{{{:x}}}", u32::from(c))
                    } else {
                        c.to_string()
                    }
                })
                .collect();
        }
        Value::Array(items) => items.iter_mut().for_each(reveal_format_characters),
        Value::Object(fields) => fields.values_mut().for_each(reveal_format_characters),
        _ => {}
    }
}

/// Read-only tools that stay inside the fleet: the common annotations.
fn observe(title: &str) -> ToolAnnotations {
    ToolAnnotations::with_title(title).read_only(true).destructive(false).idempotent(true).open_world(false)
}

/// Keeps at most `max` items, saying how many were left out.
fn capped<T>(mut items: Vec<T>, max: usize) -> (Vec<T>, usize) {
    let omitted = items.len().saturating_sub(max);
    items.truncate(max);
    (items, omitted)
}

/// Milliseconds since the epoch as RFC 3339 (UTC, seconds), or null for 0.
fn time(ms: i64) -> Value {
    if ms <= 0 {
        return Value::Null;
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs());
    Value::String(humantime::format_rfc3339_seconds(time).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_characters_in_results_are_made_visible() {
        let mut value = serde_json::json!({
            "lines": ["ok", "rm -rf /\u{202e}gnp.exe", "zero\u{200b}width"],
            "name": "tag\u{e0041}",
            "log": "esc \u{1b}[2J stays for JSON to escape",
        });
        reveal_format_characters(&mut value);
        let text = serde_json::to_string(&value).expect("json");
        assert!(!text.chars().any(tailops_proto::text::is_hidden), "{text}");
        assert_eq!(value["lines"][1], "rm -rf /\\u{202e}gnp.exe");
        assert!(text.contains("\\u001b[2J"), "{text}");
    }

    #[test]
    fn every_tool_and_argument_is_described_and_closed() {
        let set = ToolSet::new();
        assert_eq!(set.list().len(), 12 + tailops_ops::catalog().count());
        for tool in set.list() {
            assert!(
                tool.description.as_ref().is_some_and(|d| d.len() > 20),
                "{} has no description",
                tool.name
            );
            assert!(tool.annotations.as_ref().is_some_and(|a| a.read_only_hint.is_some()), "{}", tool.name);
            let schema = &tool.input_schema;
            assert_eq!(schema.get("additionalProperties"), Some(&Value::Bool(false)), "{}", tool.name);
            for (name, property) in schema.get("properties").and_then(Value::as_object).expect("properties") {
                assert!(property.get("description").is_some(), "{}.{name} has no description", tool.name);
            }
        }
    }

    #[test]
    fn operation_parameters_never_take_a_job_argument_name() {
        for spec in tailops_ops::catalog() {
            for p in spec.params {
                let name = schema::exposed(p.name);
                assert!(
                    !schema::SELECTOR_ARGS.contains(&name) && !schema::JOB_ARGS.contains(&name),
                    "{}.{} would collide with a job argument",
                    spec.name,
                    p.name
                );
            }
        }
    }

    #[test]
    fn results_over_the_limit_are_cut_with_a_note() {
        let limits = Limits { max_result_chars: 1000, ..Limits::default() };
        let small = shaped(serde_json::json!({"a": 1}), limits);
        assert_eq!(small.structured_content, Some(serde_json::json!({"a": 1})));
        let big = shaped(
            serde_json::json!({"state": "succeeded", "hosts": [{"stdout": "x".repeat(5000)}], "text": "y".repeat(5000)}),
            limits,
        );
        let head = big.structured_content.expect("the small fields stay structured");
        assert_eq!(head["state"], "succeeded");
        assert_eq!(head["truncated"], true);
        assert!(head.get("hosts").is_none() && head.get("text").is_none());
        let text = serde_json::to_string(&big.content).expect("json");
        assert!(text.contains("Narrow the request") && text.len() < 1500, "{text}");
    }
}
