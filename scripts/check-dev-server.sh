#!/usr/bin/env bash
# Usage: scripts/check-dev-server.sh [AGENT]   (AGENT defaults to $DEVSERVER_AGENT)
# Prints the shared dev server's URL and exits 0 when it runs; exits 7 when
# it does not. With an agent, also renews that agent's lease.
# A thin wrapper over `devserver`; its exit codes are the binary's.
set -euo pipefail
. "$(dirname "$0")/lib/devserver.sh"
bin=$(devserver_bin)
agent="${1:-${DEVSERVER_AGENT:-}}"
if [ -n "$agent" ]; then
    exec "$bin" --shared url --agent "$agent"
fi
exec "$bin" --shared url
