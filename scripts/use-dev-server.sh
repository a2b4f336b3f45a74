#!/usr/bin/env bash
# Usage: scripts/use-dev-server.sh [AGENT]   (AGENT defaults to $DEVSERVER_AGENT)
# Registers AGENT as a user of the shared dev server, starting it if needed; prints its URL.
# A thin wrapper over `devserver`; its exit codes are the binary's.
set -euo pipefail
. "$(dirname "$0")/lib/devserver.sh"
bin=$(devserver_bin)
agent=$(agent_id "${1:-}")
exec "$bin" use --agent "$agent"
