#!/usr/bin/env bash
# A demo of devserver on a throwaway repository: three agents get their own
# worktree, port and dev server at once, each serving its own content.
# Needs cargo, git and python3. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --locked
devserver="$PWD/target/debug/devserver"

work=$(mktemp -d "${TMPDIR:-/tmp}/devserver-demo.XXXXXX")
export DEVSERVER_HOME="$work/state"   # keep the demo out of your own registry
cleanup() {
    "$devserver" -C "$work/shop" -q stop --all >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

if [ -t 2 ] && [ -z "${NO_COLOR:-}" ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s%s%s\n' "$bold" "$*" "$plain" >&2; }
fetch() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())' "$1"; }

say "A repository with a small web app and a devserver.yaml"
mkdir -p "$work/shop" && cd "$work/shop"
git init -q -b main
echo '<h1>shop: main</h1>' > index.html
cat > devserver.yaml <<'YAML'
command: python3 -m http.server {port} --bind 127.0.0.1
health:
  timeout: 20s
YAML
git add . && git -c user.name=demo -c user.email=demo@example.invalid commit -qm "shop"
cat devserver.yaml >&2

say "Three agents spawn at the same moment"
for agent in alice bob carol; do
    "$devserver" spawn --agent "$agent" > "$work/$agent.url" &
done
wait

say "devserver list"
"$devserver" list

say "Each agent edits its own worktree; each URL serves its own content"
for agent in alice bob carol; do
    echo "<h1>shop: $agent's change</h1>" > "$work/shop.worktrees/$agent/index.html"
done
for agent in alice bob carol; do
    url=$("$devserver" url --agent "$agent")
    printf '%-6s %s -> %s\n' "$agent" "$url" "$(fetch "$url")"
done
printf '%-6s %s\n' "main" "$(cat index.html)"

say "Stop them all (and remove the worktrees devserver made)"
for agent in alice bob carol; do
    "$devserver" stop --agent "$agent" --remove --force
done
"$devserver" list
