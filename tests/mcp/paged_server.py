#!/usr/bin/env python3
"""A hand-written MCP stdio server (plain JSON-RPC, no SDK) for the driver's own test.

It lists its tools over two pages, and the tool on the second page has an input schema that is
not a valid JSON Schema ("type": 5): the driver must follow the cursor, and check_schemas must
name that tool. Every other method is answered with a JSON-RPC "method not found" error.
"""

import json
import sys

PAGES = {
    None: {
        "tools": [{"name": "first", "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}}}}],
        "nextCursor": "page-2",
    },
    "page-2": {
        "tools": [{"name": "second", "inputSchema": {"type": "object", "properties": {"y": {"type": 5}}}}],
    },
}


def answer(message_id, result=None, error=None):
    reply = {"jsonrpc": "2.0", "id": message_id}
    reply.update({"error": error} if error is not None else {"result": result})
    print(json.dumps(reply), flush=True)


for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message or "method" not in message:
        continue  # a notification, or a response to nothing we asked
    method = message["method"]
    params = message.get("params") or {}
    if method == "initialize":
        answer(
            message["id"],
            {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "paged", "version": "0.1.0"},
            },
        )
    elif method == "tools/list" and params.get("cursor") in PAGES:
        answer(message["id"], PAGES[params.get("cursor")])
    else:
        answer(message["id"], error={"code": -32601, "message": f"no method {method}"})
