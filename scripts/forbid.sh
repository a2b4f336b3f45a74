#!/usr/bin/env bash
# Fails on leftover markers in src/ and tests/:
#   - TODO, FIXME or XXX not followed by an issue reference like "(#12)"
#   - dbg!( calls
# Usage: scripts/forbid.sh [dir...]   (default: src tests)
set -euo pipefail
cd "$(dirname "$0")/.."

dirs=("$@")
[ ${#dirs[@]} -gt 0 ] || dirs=(src tests)

# Tracked plus untracked-but-not-ignored files, so node_modules and target are
# skipped; lock files are skipped too (their base64 hashes can contain "XXX").
files=()
while IFS= read -r -d '' f; do
    case "$f" in
    */package-lock.json | */Cargo.lock) continue ;;
    esac
    [ -f "$f" ] && files+=("$f")
done < <(git ls-files -z --cached --others --exclude-standard -- "${dirs[@]}")

[ ${#files[@]} -gt 0 ] || { echo "forbid: no files to check"; exit 0; }

status=0
# -I skips binary files; -P for the lookahead.
if grep -nHIP '\b(TODO|FIXME|XXX)\b(?!\(#[0-9]+\))' -- "${files[@]}"; then
    echo "forbid: marker without an issue reference, write e.g. TODO(#12)" >&2
    status=1
fi
if grep -nHIF 'dbg!(' -- "${files[@]}"; then
    echo "forbid: dbg!( left in the code" >&2
    status=1
fi
[ $status -eq 0 ] && echo "forbid: ${#files[@]} files clean"
exit $status
