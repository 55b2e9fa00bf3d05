#!/usr/bin/env bash
# The Python venv holding the official MCP SDK (requirements.txt beside this script), which the
# MCP end-to-end tests drive tailops-mcp with. Idempotent and quiet on success: the venv is
# (re)built only when it is missing or requirements.txt changed since it was built (a marker
# file in the venv holds the requirements' hash). Concurrent callers (parallel test processes)
# serialize on a lock file next to the venv.
#
# The venv is $TAILOPS_MCP_VENV, else ${CARGO_TARGET_DIR:-<repo>/target}/mcp-venv.
# With --print-python, prints the venv's python path on stdout once it is ready.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
requirements="$here/requirements.txt"
venv="${TAILOPS_MCP_VENV:-${CARGO_TARGET_DIR:-$repo/target}/mcp-venv}"
marker="$venv/.tailops-requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

print_python=false
case "${1:-}" in
    --print-python) print_python=true ;;
    "") ;;
    *) echo "usage: $0 [--print-python]" >&2; exit 2 ;;
esac

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$marker" 2>/dev/null)" != "$want" ]; then
    rm -rf "$venv"
    log="$(mktemp)"
    trap 'rm -f "$log"' EXIT
    if ! { python3 -m venv "$venv" &&
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            --requirement "$requirements"; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "error: could not set up the MCP test venv at $venv" >&2
        rm -rf "$venv"
        exit 1
    fi
    echo "$want" >"$marker"
fi

if $print_python; then
    echo "$venv/bin/python"
fi
