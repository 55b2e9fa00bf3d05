//! The MCP server: tools, prompts and host resources over one controller connection. Each MCP
//! session (one stdio client, or one HTTP session) gets its own `Bridge` value; they share the
//! tool set and the controller channel.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, GetPromptRequestParams, GetPromptResponse, Implementation,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};

use crate::controller::{BridgeIdentity, ClientTag, Controller};
use crate::prompts;
use crate::tools::{Args, Call, Limits, ToolError, ToolSet};

const HOST_URI_PREFIX: &str = "tailops://hosts/";

#[derive(Debug, Clone)]
pub struct Bridge {
    tools: Arc<ToolSet>,
    controller: Controller,
    identity: Arc<BridgeIdentity>,
    limits: Limits,
}

impl Bridge {
    pub fn new(controller: Controller, identity: BridgeIdentity, limits: Limits) -> Self {
        Self { tools: ToolSet::new(), controller, identity: Arc::new(identity), limits }
    }

    fn call(&self, context: &RequestContext<RoleServer>) -> Call {
        let client =
            context.client_info().map(|info| ClientTag::new(&info.name, &info.version)).unwrap_or_default();
        let progress = context.meta.get_progress_token().map(|token| (context.peer.clone(), token));
        Call {
            controller: self.controller.clone(),
            client,
            limits: self.limits,
            cancel: context.ct.clone(),
            progress,
        }
    }

    fn instructions(&self) -> String {
        let scope = match &self.identity.scope {
            None => "every host".to_owned(),
            Some(scope) => {
                let mut parts: Vec<String> = scope.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                parts.extend(scope.hosts.iter().cloned());
                format!("only hosts matching {}", parts.join(", "))
            }
        };
        format!(
            "TailOps: a fleet of hosts on a Tailscale network. You act as {} (role {}, {scope}). \
             Read-only tools (list_hosts, get_host, fleet_overview, query_metrics, top_processes, \
             service_list, container_list, log_journal, file_tail, net_*, ...) run at once. Tools that \
             change hosts (exec, service_restart, container_update, package_upgrade, proxmox_*) create \
             a job; unless the role allows it outright, the job waits for a human to approve it and \
             the tool returns its id and the command that approves it. Tell the user that command, \
             then follow the job with wait_job. Prefer dry_run=true first. Everything is audited \
             under your identity and your client's name.",
            self.identity.id, self.identity.role
        )
    }
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        let capabilities =
            ServerCapabilities::builder().enable_tools().enable_prompts().enable_resources().build();
        let mut info = ServerConfig::new(capabilities).with_instructions(self.instructions());
        info.server_info = Implementation::new("tailops-mcp", env!("CARGO_PKG_VERSION"));
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools.list().to_vec()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let call = self.call(&context);
        let name = request.name.to_string();
        tracing::info!(tool = %name, "tool call");
        match self.tools.call(&name, Args::new(request.arguments), &call).await {
            Some(result) => Ok(result.into()),
            None => Err(McpError::invalid_params(format!("no tool {name:?}; tools/list names them"), None)),
        }
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(ListPromptsResult::with_all_items(prompts::list()))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        prompts::get(&request.name, &request.arguments.unwrap_or_default())
            .map(Into::into)
            .map_err(|e| McpError::invalid_params(e.to_string(), None))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let call = self.call(&context);
        let names =
            self.tools.host_names(&call).await.map_err(|e| McpError::internal_error(e.to_string(), None))?;
        // As bounded as any tool result; the template reaches the rest.
        let resources = names
            .into_iter()
            .take(self.limits.max_rows)
            .map(|name| {
                Resource::new(format!("{HOST_URI_PREFIX}{name}"), name.clone())
                    .with_description(format!("Host {name}: status, health, latest metrics and facts"))
                    .with_mime_type("application/json")
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let template = ResourceTemplate::new(format!("{HOST_URI_PREFIX}{{name}}"), "host")
            .with_description("A host's status, health, latest metrics and facts")
            .with_mime_type("application/json");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let Some(host) =
            request.uri.strip_prefix(HOST_URI_PREFIX).filter(|h| !h.is_empty() && !h.contains('/'))
        else {
            return Err(McpError::resource_not_found(
                format!("unknown resource {:?}; resources look like {HOST_URI_PREFIX}NAME", request.uri),
                None,
            ));
        };
        let call = self.call(&context);
        let document = self.tools.host_document(host, &call).await.map_err(|e| match &e {
            ToolError::Controller(status) if status.code() != tonic::Code::NotFound => {
                McpError::internal_error(e.to_string(), None)
            }
            _ => McpError::resource_not_found(e.to_string(), None),
        })?;
        let text = serde_json::to_string_pretty(&document).unwrap_or_default();
        let contents = ResourceContents::text(text, request.uri).with_mime_type("application/json");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}
