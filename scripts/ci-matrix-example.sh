#!/usr/bin/env bash
# An example CI matrix on one runner: N jobs at once, each with its own
# worktree, port and dev server, each running its tests against it with
# `devserver run`, which stops the server afterwards, also when the tests
# fail. Run it in a repository that has a devserver.yaml:
#
#   scripts/ci-matrix-example.sh 8 -- npm test
#
# Each job's tests find their server in $DEVSERVER_URL.
set -euo pipefail

jobs=${1:-4}
shift || true
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || set -- sh -c 'echo "job $DEVSERVER_AGENT testing $DEVSERVER_URL"'

devserver=${DEVSERVER_BIN:-devserver}
pids=()
for n in $(seq 1 "$jobs"); do
    "$devserver" run --agent "ci-$n" -- "$@" &
    pids+=($!)
done

status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
exit "$status"
