#!/usr/bin/env python3
"""A line-oriented MCP client for the end-to-end tests, built on the official MCP Python SDK.

The tests drive tailops-mcp through this rather than through a client of our own, so that what
they check is what a real, independently written client sees.

Usage:
    driver.py stdio [--client-name N] [--client-version V] -- CMD ARGS...
    driver.py http URL [--header 'K: V']... [--client-name N] [--client-version V]

stdio spawns CMD as the server (with this process's whole environment; its stderr goes to ours);
http connects to a Streamable HTTP endpoint. Either way the driver runs the initialize handshake
and prints one JSON line:

    {"ok": true, "initialized": {"server_info": {...}, "protocol_version": "...",
                                 "capabilities": {...}, "instructions": ...}}

or {"ok": false, "error": "..."} and exits 1. It then reads one JSON command per line on stdin
and answers each with exactly one JSON line on stdout, until EOF (exit 0). A command is an object
whose "op" is one of:

    list_tools                 {"ok": true, "tools": [...]}                  (all pages)
    check_schemas              {"ok": true, "checked": N}, or ok false naming the tool
    call_tool                  name, arguments?, progress?, cancel_after_ms?, timeout_s?
                               {"ok": true, "result": {"isError", "content", "structuredContent",
                                "_meta"?}, "progress": [{"progress", "total", "message"}...]}
                               or, cancelled: {"ok": true, "cancelled": true, "progress": [...]}
    list_prompts               {"ok": true, "prompts": [...]}                (all pages)
    get_prompt                 name, arguments?   -> {"ok": true, ...GetPromptResult}
    list_resources             {"ok": true, "resources": [...]}              (all pages)
    list_resource_templates    {"ok": true, "resourceTemplates": [...]}      (all pages)
    read_resource              uri                -> {"ok": true, ...ReadResourceResult}
    ping                       {"ok": true}

A JSON-RPC error answers {"ok": false, "error": message, "code": code} (and "data" when the
server sent some); any other failure {"ok": false, "error": "..."}. Over HTTP, a failure that
came with an HTTP error status also carries "http_status" (the SDK turns a bare 401, say, into
a generic JSON-RPC error), and the error text names it. A bad command never ends the
driver. Results are the SDK's models dumped with model_dump(mode="json", by_alias=True,
exclude_none=True, exclude_unset=True): keys are the wire's camelCase, and a field appears only
if the server sent it (not the SDK's defaults for later protocol revisions, like resultType).

Note that the SDK itself validates a successful call_tool result's structuredContent against the
tool's outputSchema; a mismatch comes back as {"ok": false, "error": "Invalid structured content
returned by tool ..."}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.lowlevel
import httpx2
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Implementation, PaginatedRequestParams
from pydantic import BaseModel

# How long the initialize handshake may take.
INIT_TIMEOUT_S = 60.0
# A server that keeps handing out cursors must not hang a listing.
MAX_PAGES = 1000


class CommandError(Exception):
    """A bad command: reported as {"ok": false, "error": ...}."""


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def dump(model: BaseModel | None) -> Any:
    if model is None:
        return None
    return model.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)


def describe(exc: BaseException) -> str:
    """A one-line account of an exception, with the leaves of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def error_response(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return error_response(exc.exceptions[0])
    if isinstance(exc, MCPError):
        out: dict[str, Any] = {"ok": False, "error": exc.message, "code": exc.code}
        if exc.data is not None:
            out["data"] = exc.data
        return out
    if isinstance(exc, CommandError):
        return {"ok": False, "error": str(exc)}
    return {"ok": False, "error": describe(exc)}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description="MCP client for the TailOps end-to-end tests")
    sub = parser.add_subparsers(dest="transport", required=True)
    for name in ("stdio", "http"):
        p = sub.add_parser(name)
        if name == "http":
            p.add_argument("url")
            p.add_argument("--header", action="append", default=[], metavar="'K: V'")
        p.add_argument("--client-name", default="tailops-tests")
        p.add_argument("--client-version", default="0.0.0")
    args = parser.parse_args(argv)
    if args.transport == "stdio" and not command:
        parser.error("stdio needs the server command after --")
    if args.transport == "http" and command:
        parser.error("http takes no command after --")
    return args, command


def parse_headers(raw: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise CommandError(f"bad --header {item!r}, expected 'Name: value'")
        headers[key.strip()] = value.strip()
    return headers


class HttpErrors:
    """The last HTTP error status seen, which the SDK folds into a generic JSON-RPC error."""

    def __init__(self) -> None:
        self.last: tuple[int, str] | None = None

    async def on_response(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            request = response.request
            self.last = (
                response.status_code,
                f"HTTP {response.status_code} {response.reason_phrase} from {request.method} {request.url}",
            )

    def annotate(self, out: dict[str, Any]) -> dict[str, Any]:
        if self.last is not None and not out.get("ok", True):
            status, text = self.last
            out = out | {"error": f"{out['error']} ({text})", "http_status": status}
        self.last = None
        return out


async def connect(
    stack: AsyncExitStack, args: argparse.Namespace, command: list[str], http_errors: HttpErrors
) -> ClientSession:
    if args.transport == "stdio":
        params = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
        read, write = await stack.enter_async_context(stdio_client(params, errlog=sys.stderr))
    else:
        # The SDK's own defaults for MCP over HTTP: 30 s to connect or write, 5 min between reads.
        http = httpx2.AsyncClient(
            headers=parse_headers(args.header),
            timeout=httpx2.Timeout(30.0, read=300.0),
            event_hooks={"response": [http_errors.on_response]},
        )
        await stack.enter_async_context(http)
        read, write = await stack.enter_async_context(streamable_http_client(args.url, http_client=http))
    info = Implementation(name=args.client_name, version=args.client_version)
    return await stack.enter_async_context(ClientSession(read, write, client_info=info))


def field(cmd: dict[str, Any], key: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    value = cmd.get(key)
    if value is None:
        if required:
            raise CommandError(f"missing {key!r}")
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to Python, but not to a command's author.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise CommandError(f"bad {key!r}: {value!r}")
    return value


async def all_pages(fetch: Callable[[PaginatedRequestParams | None], Awaitable[Any]], key: str) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await fetch(PaginatedRequestParams(cursor=cursor) if cursor is not None else None)
        items.extend(getattr(page, key))
        cursor = page.next_cursor
        if cursor is None:
            return items
    raise CommandError(f"more than {MAX_PAGES} pages of {key}")


async def list_tools(session: ClientSession) -> list[Any]:
    return await all_pages(lambda params: session.list_tools(params=params), "tools")


async def check_schemas(session: ClientSession) -> dict[str, Any]:
    checked = 0
    for tool in await list_tools(session):
        for label, schema in (("inputSchema", tool.input_schema), ("outputSchema", tool.output_schema)):
            if schema is None:
                continue
            if not isinstance(schema, dict):
                return {"ok": False, "error": f"tool {tool.name}: {label} is not an object"}
            # The spec requires both to describe a JSON object.
            if schema.get("type") != "object":
                return {
                    "ok": False,
                    "error": f"tool {tool.name}: {label} has type {schema.get('type')!r}, not 'object'",
                }
            try:
                validator_for(schema).check_schema(schema)
            except SchemaError as e:
                return {"ok": False, "error": f"tool {tool.name}: {label}: {e.message} (at {list(e.path)})"}
            checked += 1
    return {"ok": True, "checked": checked}


async def call_tool(session: ClientSession, cmd: dict[str, Any]) -> dict[str, Any]:
    name = field(cmd, "name", str)
    arguments = field(cmd, "arguments", dict, required=False)
    want_progress = field(cmd, "progress", bool, required=False) or False
    cancel_after_ms = field(cmd, "cancel_after_ms", int, required=False)
    timeout_s = field(cmd, "timeout_s", (int, float), required=False)

    progress: list[dict[str, Any]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append({"progress": value, "total": total, "message": message})

    async def call() -> Any:
        return await session.call_tool(
            name,
            arguments,
            read_timeout_seconds=float(timeout_s) if timeout_s is not None else None,
            progress_callback=on_progress if want_progress else None,
        )

    if cancel_after_ms is None:
        result = await call()
    else:
        # Abandoning the awaiting task is how the SDK cancels a request: its dispatcher sends
        # notifications/cancelled for it (shielded, before the cancellation propagates) and
        # drops any late response.
        result = None
        with anyio.move_on_after(cancel_after_ms / 1000) as scope:
            result = await call()
        if scope.cancelled_caught:
            return {"ok": True, "cancelled": True, "progress": progress}

    # Progress callbacks run as tasks spawned in receive order; one checkpoint lets any still
    # queued behind the response land before the list is reported.
    await anyio.lowlevel.checkpoint()
    out = dump(result)
    out["isError"] = bool(result.is_error)
    out.setdefault("content", [])
    out.setdefault("structuredContent", None)
    return {"ok": True, "result": out, "progress": progress}


async def handle(session: ClientSession, cmd: Any) -> dict[str, Any]:
    if not isinstance(cmd, dict):
        raise CommandError("a command must be a JSON object")
    op = cmd.get("op")
    if op == "list_tools":
        return {"ok": True, "tools": [dump(t) for t in await list_tools(session)]}
    if op == "check_schemas":
        return await check_schemas(session)
    if op == "call_tool":
        return await call_tool(session, cmd)
    if op == "list_prompts":
        prompts = await all_pages(lambda p: session.list_prompts(params=p), "prompts")
        return {"ok": True, "prompts": [dump(p) for p in prompts]}
    if op == "get_prompt":
        arguments = field(cmd, "arguments", dict, required=False)
        if arguments is not None and not all(isinstance(v, str) for v in arguments.values()):
            raise CommandError("prompt arguments must be strings")
        return {"ok": True, **dump(await session.get_prompt(field(cmd, "name", str), arguments))}
    if op == "list_resources":
        resources = await all_pages(lambda p: session.list_resources(params=p), "resources")
        return {"ok": True, "resources": [dump(r) for r in resources]}
    if op == "list_resource_templates":
        templates = await all_pages(lambda p: session.list_resource_templates(params=p), "resource_templates")
        return {"ok": True, "resourceTemplates": [dump(t) for t in templates]}
    if op == "read_resource":
        return {"ok": True, **dump(await session.read_resource(field(cmd, "uri", str)))}
    if op == "ping":
        await session.send_ping()
        return {"ok": True}
    return {"ok": False, "error": "unknown op"}


async def serve_commands(session: ClientSession, pending: list[str], http_errors: HttpErrors) -> None:
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            return
        if not line.strip():
            continue
        pending.append(line.strip())
        http_errors.last = None
        try:
            cmd = json.loads(line)
        except json.JSONDecodeError as e:
            response: dict[str, Any] = {"ok": False, "error": f"bad JSON: {e}"}
        else:
            try:
                response = await handle(session, cmd)
            except Exception as e:  # noqa: BLE001 - every failure is reported, never raised
                response = error_response(e)
        pending.pop()
        emit(http_errors.annotate(response))


async def main(args: argparse.Namespace, command: list[str]) -> int:
    # The command being served when the connection broke, so that it still gets its one line.
    pending: list[str] = []
    initialized = False
    http_errors = HttpErrors()
    try:
        async with AsyncExitStack() as stack:
            session = await connect(stack, args, command, http_errors)
            with anyio.fail_after(INIT_TIMEOUT_S):
                result = await session.initialize()
            emit(
                {
                    "ok": True,
                    "initialized": {
                        "server_info": dump(result.server_info),
                        "protocol_version": result.protocol_version,
                        "capabilities": dump(result.capabilities),
                        "instructions": result.instructions,
                    },
                }
            )
            initialized = True
            await serve_commands(session, pending, http_errors)
            # Closing down while a cancelled call's SSE stream is still open makes the SDK log
            # a traceback for the event it can no longer deliver: noise, at this point.
            logging.getLogger("mcp.client.streamable_http").setLevel(logging.CRITICAL)
    except Exception as e:  # noqa: BLE001 - reported on stdout, the driver's only channel
        if not initialized:
            response = error_response(e)
            emit(http_errors.annotate(response | {"error": f"initialize failed: {response['error']}"}))
        elif pending:
            emit(http_errors.annotate({"ok": False, "error": f"connection lost: {describe(e)}"}))
        print(f"driver.py: {describe(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    parsed, server_command = parse_args(sys.argv[1:])
    sys.exit(anyio.run(main, parsed, server_command))
