#!/usr/bin/env bash
# Usage: scripts/start-dev-server.sh [AGENT]   (AGENT defaults to $DEVSERVER_AGENT)
# Starts the shared dev server (as a user: the same as use-dev-server.sh); prints its URL.
# A thin wrapper over `devserver`; its exit codes are the binary's.
set -euo pipefail
. "$(dirname "$0")/lib/devserver.sh"
bin=$(devserver_bin)
agent=$(agent_id "${1:-}")
exec "$bin" use --agent "$agent"
