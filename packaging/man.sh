#!/usr/bin/env bash
# Renders the manual pages from their Markdown sources (docs/man/NAME.SECTION.md) into roff with
# pandoc, then has man render each one and fails on any warning.
#
#   packaging/man.sh [OUT_DIR]      (default: target/man)
#
# The Markdown is the only source: the roff is generated, never committed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-target/man}
mkdir -p "$out"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[[ -n "$version" ]] || { echo "man.sh: no version in Cargo.toml" >&2; exit 1; }
# The date of the last commit, so the pages do not change from one build to the next.
date=$(git log -1 --format=%cs 2>/dev/null || true)

status=0
for src in docs/man/*.md; do
    page=$(basename "$src" .md) # e.g. iap-ssh.1
    pandoc --standalone --from markdown-smart --to man \
        --metadata footer="iap-ssh $version" ${date:+--metadata date="$date"} \
        --output "$out/$page" "$src"
    # man renders the page as it would for a reader; groff's warnings go to stderr.
    warnings=$(MANWIDTH=80 man --warnings -l "$out/$page" 2>&1 >/dev/null) || {
        echo "man.sh: man could not render $out/$page (from $src)" >&2
        status=1
    }
    if [[ -n "$warnings" ]]; then
        echo "man.sh: $out/$page (from $src) renders with warnings:" >&2
        echo "$warnings" >&2
        status=1
    fi
    echo "$out/$page"
done
exit "$status"
