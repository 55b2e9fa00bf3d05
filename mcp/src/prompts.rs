//! Prompts: the investigations people ran most with the MCP server this replaces, rewritten for
//! a fleet and for this bridge's tools.

use rmcp::model::{GetPromptResult, Prompt, PromptArgument, PromptMessage, Role};
use serde_json::Value;

struct PromptSpec {
    name: &'static str,
    title: &'static str,
    description: &'static str,
    /// (name, description, required)
    arguments: &'static [(&'static str, &'static str, bool)],
    /// The message; `{name}` is replaced by the argument's value.
    template: &'static str,
}

const PROMPTS: &[PromptSpec] = &[
    PromptSpec {
        name: "health_check",
        title: "Fleet health check",
        description: "Check the fleet (or hosts with a label) and report what needs attention.",
        arguments: &[("labels", "Optional label filter, e.g. env=prod", false)],
        template: "Run a health check of my fleet{labels_clause}. Start with fleet_overview, then \
                   list_hosts with problems_only=true. For every offline, stale, degraded or unhealthy \
                   host, call get_host and explain the reasons it gives; for high CPU or memory, use \
                   top_processes; for failed units, service_list with state=failed. Finish with a short \
                   table: host, problem, likely cause, suggested next step. Do not change anything.",
    },
    PromptSpec {
        name: "security_audit",
        title: "Security audit of a host",
        description: "Review a host's security posture: listening sockets, basics, pending updates.",
        arguments: &[("host", "The host to audit", true)],
        template: "Audit the security of host {host}. Use security_checks for the basics, net_sockets \
                   for what listens on which address, package_updates for pending (security) updates, \
                   container_list for running containers and recent_audit for what was done recently. \
                   Rank the findings by risk and say for each how to fix it. Change nothing: suggest \
                   commands, and let me decide.",
    },
    PromptSpec {
        name: "troubleshoot_host",
        title: "Troubleshoot a host",
        description: "Find out why a host is slow, unhealthy or unreachable.",
        arguments: &[("host", "The host", true), ("symptom", "What is wrong, in your words", false)],
        template: "Host {host} has a problem: {symptom}. Investigate step by step: get_host (health \
                   reasons, latest metrics), query_metrics for the last 6h to see when it started, \
                   top_processes, service_list with state=failed, log_journal with priority=err since \
                   1h, and inventory_changes for what changed recently. Say what you found, the most \
                   likely cause, and the fix; ask before running anything that changes the host.",
    },
    PromptSpec {
        name: "troubleshoot_container",
        title: "Troubleshoot a container",
        description: "Find out why a container is failing, restarting or slow.",
        arguments: &[("host", "The host running it", true), ("container", "The container's name", true)],
        template: "The container {container} on host {host} is misbehaving. Use container_inspect \
                   (state, restarts, health, mounts, ports), container_logs with lines=200, \
                   container_stats, and get_host for the host's resources. Explain the cause and the \
                   fix. If a restart or update is warranted, propose it (container_restart or \
                   container_update with dry_run=true first) and wait for my go-ahead: it will need \
                   human approval.",
    },
    PromptSpec {
        name: "investigate_high_usage",
        title: "Investigate high resource usage",
        description: "What is using the CPU, memory or disk on a host, since when, and why.",
        arguments: &[("host", "The host", true), ("resource", "cpu, memory or disk", false)],
        template: "Something is using too much {resource} on host {host}. Use get_host and \
                   query_metrics (since 24h) to see how long it has been going on, top_processes \
                   sorted by cpu or memory, and for disk file_list or file_search under the allowed \
                   paths. Name the process or service responsible, how its usage changed over time, \
                   and what to do about it.",
    },
    PromptSpec {
        name: "plan_fleet_update",
        title: "Plan a fleet update",
        description: "Plan package and container updates across the fleet without applying them.",
        arguments: &[("labels", "Optional label filter, e.g. env=staging", false)],
        template: "Plan updates for my fleet{labels_clause}. Use package_updates on the hosts, and \
                   container_list to see images in use. Group hosts into waves (least critical first; \
                   never all replicas of a service in one wave), note reboots or restarts each wave \
                   needs, and show the dry_run plan for the first wave with package_upgrade \
                   dry_run=true. Apply nothing: each step needs a human's approval.",
    },
];

pub fn list() -> Vec<Prompt> {
    PROMPTS
        .iter()
        .map(|p| {
            let arguments = p
                .arguments
                .iter()
                .map(|(name, description, required)| {
                    let mut argument = PromptArgument::new(*name).with_description(*description);
                    argument.required = Some(*required);
                    argument
                })
                .collect();
            let mut prompt = Prompt::new(p.name, Some(p.description), Some(arguments));
            prompt.title = Some(p.title.to_owned());
            prompt
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("no prompt {0:?}; prompts/list names them")]
    Unknown(String),
    #[error("prompt {prompt} needs the argument {argument}")]
    Missing { prompt: &'static str, argument: &'static str },
}

/// The prompt's message with the arguments filled in.
pub fn get(name: &str, arguments: &serde_json::Map<String, Value>) -> Result<GetPromptResult, PromptError> {
    let spec =
        PROMPTS.iter().find(|p| p.name == name).ok_or_else(|| PromptError::Unknown(name.to_owned()))?;
    let value =
        |key: &str| arguments.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let mut text = spec.template.to_owned();
    for (argument, _, required) in spec.arguments {
        let given = value(argument);
        if *required && given.is_none() {
            return Err(PromptError::Missing { prompt: spec.name, argument });
        }
        let filled = match (*argument, given) {
            ("labels", Some(labels)) => {
                text = text.replace("{labels_clause}", &format!(" (hosts with labels {labels})"));
                continue;
            }
            ("labels", None) => {
                text = text.replace("{labels_clause}", "");
                continue;
            }
            ("symptom", None) => "not described yet; ask me if the data does not make it clear",
            ("resource", None) => "CPU, memory or disk",
            (_, Some(given)) => given,
            (_, None) => "",
        };
        text = text.replace(&format!("{{{argument}}}"), filled);
    }
    Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
        .with_description(spec.description))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_argument_is_filled_in() {
        for spec in PROMPTS {
            let arguments: serde_json::Map<String, Value> =
                spec.arguments.iter().map(|(name, _, _)| ((*name).to_owned(), Value::from("x"))).collect();
            let result = get(spec.name, &arguments).expect("prompt");
            let text = serde_json::to_string(&result.messages).expect("json");
            assert!(!text.contains("_clause}"), "{}: {text}", spec.name);
            assert!(
                !spec.arguments.iter().any(|(a, _, _)| text.contains(&format!("{{{a}}}"))),
                "{}",
                spec.name
            );
        }
    }

    #[test]
    fn a_missing_required_argument_is_named() {
        let error = get("troubleshoot_host", &serde_json::Map::new()).expect_err("host is required");
        assert!(error.to_string().contains("host"), "{error}");
    }
}
