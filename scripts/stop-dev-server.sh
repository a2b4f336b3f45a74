#!/usr/bin/env bash
# Usage: scripts/stop-dev-server.sh [AGENT] [--force]
# Stops the shared dev server. AGENT's own lease is released first; the stop
# is refused (exit 5) while other users hold leases, unless --force.
# A thin wrapper over `devserver`; its exit codes are the binary's.
set -euo pipefail
. "$(dirname "$0")/lib/devserver.sh"
bin=$(devserver_bin)
force=()
args=()
for arg in "$@"; do
    case "$arg" in
    --force) force=(--force) ;;
    *) args+=("$arg") ;;
    esac
done
agent="${args[0]:-${DEVSERVER_AGENT:-}}"
if [ -n "$agent" ]; then
    exec "$bin" --shared stop --agent "$agent" "${force[@]}"
fi
exec "$bin" --shared stop "${force[@]}"
