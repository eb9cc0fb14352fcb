#!/usr/bin/env bash
# Runs every fuzz target for N seconds each (default 60): bash fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`). Each target's corpus grows in fuzz/corpus/TARGET (not committed),
# seeded from fuzz/seeds/TARGET (the protocol.md golden vectors and README examples, committed).
# A crash stops that target, leaves its input in fuzz/artifacts/TARGET, and the script exits 1
# after the remaining targets have run; reproduce with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${1:-60}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi
if ! command -v cargo-fuzz >/dev/null; then
    echo "cargo-fuzz not found: cargo install cargo-fuzz" >&2
    exit 2
fi
if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build -O
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "==> $t for ${seconds}s"
    # -rss_limit_mb: a target that balloons is a finding too.
    if ! cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>"corpus/$t.log"; then
        failed+=("$t")
        tail -n 40 "corpus/$t.log" >&2
    fi
    grep -E '^stat::number_of_executed_units|^Done|^stat::peak_rss_mb' "corpus/$t.log" || true
done
if ((${#failed[@]} > 0)); then
    echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s without a crash"
