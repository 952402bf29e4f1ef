#!/usr/bin/env bash
# The proxy comparison: direct, wsedge, wsedge (relay = "tunnel"), nginx and
# HAProxy (each as shipped and tuned), on one pinned CPU each, driven by wsload.
#
#   loadtest/compare.sh            # full run, under 10 minutes on 2 cores
#   loadtest/compare.sh --quick    # about a minute
#   loadtest/compare.sh --only nginx,haproxy,direct --no-doc
#   loadtest/compare.sh --tls --tls-rsa   # the proxies terminating TLS
#
# Builds the release binaries, then runs `wsload compare` with the arguments
# given (see `target/release/wsload compare --help`). Installs nginx and
# HAProxy from Debian packages when missing (needs root). Writes the
# "## Proxy comparison (wsload)" section of docs/benchmarks.md and the plots
# in docs/img/. A benchmark, not a test: it is not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p wsload
# wsedge is optional: compared when it builds (and takes --upstream).
cargo build --release -p wsedge --bin wsedge || echo "compare.sh: wsedge did not build; comparing without it" >&2
exec target/release/wsload compare "$@"
