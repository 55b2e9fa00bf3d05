//! Tool arguments as the client sent them, read with errors that say what was expected.
//! Schemas describe the arguments, but a client may not validate against them: every value is
//! checked again here, and unknown arguments are refused rather than ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use rmcp::model::JsonObject;
use serde_json::Value;
use tailops_proto::v1;

use super::ToolError;

#[derive(Debug, Default)]
pub struct Args(JsonObject);

fn invalid(message: String) -> ToolError {
    ToolError::InvalidArgument(message)
}

impl Args {
    pub fn new(arguments: Option<JsonObject>) -> Self {
        Self(arguments.unwrap_or_default())
    }

    /// Refuses arguments the tool does not take (a misspelt `limit` must not silently mean
    /// "no limit").
    pub fn only(&self, known: &[&str]) -> Result<(), ToolError> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(invalid(format!(
                "unknown argument {unknown:?}; this tool takes: {}",
                if known.is_empty() { "nothing".to_owned() } else { known.join(", ") }
            ))),
            None => Ok(()),
        }
    }

    pub fn raw(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn text(&self, name: &str) -> Result<Option<&str>, ToolError> {
        match self.raw(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim())),
            Some(other) => Err(invalid(format!("{name} must be a string, not {other}"))),
        }
    }

    pub fn required_text(&self, name: &str) -> Result<&str, ToolError> {
        self.text(name)?.ok_or_else(|| invalid(format!("{name} is required")))
    }

    pub fn flag(&self, name: &str) -> Result<bool, ToolError> {
        match self.raw(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(invalid(format!("{name} must be true or false, not {other}"))),
        }
    }

    /// A whole number in `min..=max`, `default` when absent.
    pub fn number(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ToolError> {
        let value = match self.raw(name) {
            None => return Ok(default),
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        value
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| invalid(format!("{name} must be a whole number from {min} to {max}")))
    }

    pub fn duration(&self, name: &str) -> Result<Option<Duration>, ToolError> {
        self.text(name)?
            .map(|text| {
                humantime::parse_duration(text)
                    .map_err(|e| invalid(format!("{name}: {e}; write durations like 30s, 15m, 2h or 7d")))
            })
            .transpose()
    }

    pub fn strings(&self, name: &str) -> Result<Vec<String>, ToolError> {
        match self.raw(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(invalid(format!("{name} must be a list of strings; {other} is not one"))),
                })
                .collect(),
            Some(other) => Err(invalid(format!("{name} must be a list of strings, not {other}"))),
        }
    }

    pub fn string_map(&self, name: &str) -> Result<BTreeMap<String, String>, ToolError> {
        match self.raw(name) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(invalid(format!("{name}.{k} must be a string, not {other}"))),
                })
                .collect(),
            Some(other) => Err(invalid(format!("{name} must be an object of strings, not {other}"))),
        }
    }

    /// The hosts a job runs on: `host` (one name), `hosts` (names) and `labels` (all must match)
    /// combine; at least one is required so no call reaches the whole fleet by omission.
    pub fn selector(&self) -> Result<v1::HostSelector, ToolError> {
        let mut hosts = self.strings("hosts")?;
        if let Some(host) = self.text("host")? {
            hosts.push(host.to_owned());
        }
        let labels = self.string_map("labels")?;
        let all = self.flag("all_hosts")?;
        if hosts.is_empty() && labels.is_empty() && !all {
            return Err(invalid(
                "say which hosts: host (one name), hosts (names), labels, or all_hosts=true; list_hosts \
                 shows them"
                    .to_owned(),
            ));
        }
        Ok(v1::HostSelector { all: all && hosts.is_empty() && labels.is_empty(), labels, hosts })
    }
}
