# Shared by the *-dev-server.sh wrappers: finds the devserver binary and the
# agent ID. Source it; it defines `devserver_bin` and `agent_id`.

# The binary: $DEVSERVER_BIN, else `devserver` on PATH, else this checkout's build.
devserver_bin() {
    if [ -n "${DEVSERVER_BIN:-}" ]; then
        printf '%s\n' "$DEVSERVER_BIN"
    elif command -v devserver >/dev/null 2>&1; then
        command -v devserver
    else
        here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
        for candidate in "$here/target/release/devserver" "$here/target/debug/devserver"; do
            [ -x "$candidate" ] && { printf '%s\n' "$candidate"; return; }
        done
        echo "error: \`devserver\` is not on PATH" >&2
        echo "hint: run \`cargo install --path .\` in the devserver repository, or set DEVSERVER_BIN" >&2
        return 2
    fi
}

# The agent: the first argument, else $DEVSERVER_AGENT.
agent_id() {
    local id="${1:-${DEVSERVER_AGENT:-}}"
    if [ -z "$id" ]; then
        echo "error: no agent ID" >&2
        echo "hint: pass it as the first argument or set DEVSERVER_AGENT" >&2
        return 2
    fi
    printf '%s\n' "$id"
}
