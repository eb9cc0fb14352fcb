#!/usr/bin/env bash
# Builds the Debian packages iap-ssh and iap-relay into target/debian/ from the release build
# (run `cargo build --release --locked` first: the packages reuse it, nothing is rebuilt).
# Needs cargo-deb and pandoc; renders the manual pages (packaging/man.sh) and writes a
# Debian changelog for the version in Cargo.toml.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
for bin in iap-ssh iap-relay; do
    [[ -x target/release/$bin ]] || {
        echo "build-debs: target/release/$bin is missing: run cargo build --release --locked" >&2
        exit 1
    }
done

packaging/man.sh target/man >/dev/null

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
# The last commit's time, so that rebuilding the same commit gives the same changelog.
when=$(date -u -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")
maintainer=$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
mkdir -p target/packaging
for pkg in iap-ssh iap-relay; do
    cat >"target/packaging/$pkg.changelog" <<CHANGELOG
$pkg ($version-1) unstable; urgency=medium

  * Built from the iap-ssh source tree at version $version.

 -- $maintainer  $when
CHANGELOG
done

rm -f target/debian/*.deb
cargo deb --no-build --locked
cargo deb --no-build --locked --variant relay
ls target/debian/*.deb
