#!/usr/bin/env bash
# Builds every fuzz target (stable toolchain, no sanitizer) and runs each for
# a few seconds from its committed seeds. Called from CI; see docs/fuzzing.md.
#
#   FUZZ_SECONDS  seconds per target (default 3)
#
# Exits non-zero if a target fails to build or a run finds a crash; the
# crashing input is left in fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-3}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "ci.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cargo fuzz build -s none

status=0
for target in $(cargo fuzz list); do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    seeds=()
    [ -d "seeds/$target" ] && seeds=("seeds/$target")
    echo "ci.sh: $target for ${seconds}s" >&2
    if ! cargo fuzz run -s none "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1; then
        echo "ci.sh: $target FAILED; see fuzz/artifacts/$target/" >&2
        status=1
    fi
done
exit "$status"
