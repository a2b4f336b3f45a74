#!/usr/bin/env bash
# Usage: scripts/release-dev-server.sh [AGENT]   (AGENT defaults to $DEVSERVER_AGENT)
# Removes AGENT's lease; the server stops after the last user leaves.
# A thin wrapper over `devserver`; its exit codes are the binary's.
set -euo pipefail
. "$(dirname "$0")/lib/devserver.sh"
bin=$(devserver_bin)
agent=$(agent_id "${1:-}")
exec "$bin" release --agent "$agent"
