//! `tailops-mcp`: an MCP server that lets AI assistants use a TailOps controller under the
//! bridge principal's own, narrower identity. It holds no power of its own: every tool is a
//! controller RPC, so roles, scopes, approvals, rate limits and the audit log apply unchanged.
//!
//! - [`bridge`]: the MCP server (tools, prompts, `tailops://hosts/{name}` resources).
//! - [`tools`]: the tools, with catalog operations turned into tools.
//! - [`controller`]: the controller connection, certificate renewal, client attribution.
//! - [`http`]: the Streamable HTTP transport's guards.

pub mod bridge;
pub mod controller;
pub mod http;
pub mod prompts;
pub mod tools;

pub use bridge::Bridge;
