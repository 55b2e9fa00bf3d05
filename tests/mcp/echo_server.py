#!/usr/bin/env python3
"""A tiny MCP server on the official Python SDK, for the driver's own test (tests/tests/mcp_driver.rs).

Usage:
    echo_server.py stdio
    echo_server.py http [--require-header 'K: V']

http serves Streamable HTTP at http://127.0.0.1:PORT/mcp on a port of its choosing and prints
{"url": "http://127.0.0.1:PORT/mcp"} as its first stdout line once it is listening. With
--require-header, a request without exactly that header is refused with 401.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from pydantic import BaseModel

server = MCPServer(
    name="tailops-echo",
    version="1.2.3",
    instructions="A reference server for the TailOps MCP driver's self-test.",
)

# What the tools saw, for the test to read back through the `stats` tool.
cancelled_calls = 0


class Counted(BaseModel):
    steps: int
    text: str


@server.tool(title="Echo", description="Returns its text.", annotations=ToolAnnotations(read_only_hint=True))
def echo(text: str) -> str:
    return text


@server.tool(description="Reports progress `steps` times, then returns a structured summary.")
async def count(steps: int, ctx: Context) -> Counted:
    for i in range(steps):
        await ctx.report_progress(i + 1, steps, f"step {i + 1}")
    return Counted(steps=steps, text=f"counted to {steps}")


@server.tool(description="Reports progress once, then sleeps until cancelled.")
async def wait_for_cancel(ctx: Context) -> str:
    global cancelled_calls
    await ctx.report_progress(0, None, "waiting")
    try:
        await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        cancelled_calls += 1
        raise
    return "unreachable"


@server.tool(description="How many calls were cancelled so far.")
def stats() -> dict[str, Any]:
    return {"cancelled_calls": cancelled_calls}


@server.tool(description="The clientInfo this connection was initialized with.")
def whoami(ctx: Context) -> dict[str, Any]:
    params = ctx.session.client_params
    info = params.client_info if params is not None else None
    return {"name": info.name if info else None, "version": info.version if info else None}


@server.tool(description="An environment variable of the server process, or null.")
def env(name: str) -> dict[str, Any]:
    return {"value": os.environ.get(name)}


@server.tool(description="Always fails with the given message.")
def fail(message: str) -> str:
    raise ValueError(message)


@server.prompt(description="Greets someone.")
def greet(name: str) -> str:
    return f"Hello, {name}!"


@server.resource("echo://{word}", description="The word, back.", mime_type="text/plain")
def echo_resource(word: str) -> str:
    return f"echo: {word}"


@server.resource("echo://static/readme", name="readme", mime_type="text/plain")
def readme() -> str:
    return "a fixed resource"


def require_header(app: Any, name: str, value: str) -> Any:
    """Wraps an ASGI app so that HTTP requests lacking `name: value` get 401."""
    wanted = (name.lower().encode(), value.encode())

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and wanted not in scope["headers"]:
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"missing credentials\n"})
            return
        await app(scope, receive, send)

    return guarded


async def serve_http(header: str | None) -> None:
    app: Any = server.streamable_http_app()
    if header is not None:
        name, _, value = header.partition(":")
        app = require_header(app, name.strip(), value.strip())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    http = uvicorn.Server(config)

    async def announce() -> None:
        while not http.started:
            await anyio.sleep(0.01)
        print(json.dumps({"url": f"http://127.0.0.1:{port}/mcp"}), flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await http.serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="transport", required=True)
    sub.add_parser("stdio")
    http = sub.add_parser("http")
    http.add_argument("--require-header", metavar="'K: V'")
    args = parser.parse_args()
    if args.transport == "stdio":
        server.run("stdio")
    else:
        anyio.run(serve_http, args.require_header)


if __name__ == "__main__":
    sys.exit(main())
