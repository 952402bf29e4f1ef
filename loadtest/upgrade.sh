#!/usr/bin/env bash
# Binary upgrade under load: `wsload connect --rate RATE` (open loop: one
# handshake every 1/RATE s, each connect + 101 + close) runs against a
# release wsedge for DURATION; UPGRADE_AT seconds in, `wsedge --upgrade`
# hands the listening sockets to a new process. wsload's report counts the
# failed handshakes ("errors"): the figure asked for is 0 refused handshakes
# across an upgrade at 200 handshakes/s.
#
# Usage: [RATE=200] [DURATION=8s] [UPGRADE_AT=3] [WORKERS=2] loadtest/upgrade.sh
# Needs release builds: cargo build --release -p wsedge -p wsload
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/wsedge
w=target/release/wsload
dir=$(mktemp -d)
trap 'kill $(cat "$dir/wsedge.pid" 2>/dev/null) 2>/dev/null; rm -rf "$dir"' EXIT
cat >"$dir/wsedge.toml" <<TOML
workers = ${WORKERS:-2}
pid_file = "$dir/wsedge.pid"
[[listener]]
address = "127.0.0.1:19300"
[[upstream]]
name = "echo"
servers = ["builtin:echo"]
[[route]]
path = "/"
upstream = "echo"
[timeouts]
drain_period = "2s"
TOML
"$bin" --config "$dir/wsedge.toml" >"$dir/wsedge.log" 2>&1 &
for _ in $(seq 1 50); do [ -s "$dir/wsedge.pid" ] && break; sleep 0.1; done
old=$(cat "$dir/wsedge.pid")
"$w" connect ws://127.0.0.1:19300/ --rate "${RATE:-200}" -d "${DURATION:-8s}" --warmup 0s \
    >"$dir/wsload.txt" 2>&1 &
load=$!
sleep "${UPGRADE_AT:-3}"
"$bin" --upgrade --config "$dir/wsedge.toml"
wait "$load" || true
new=$(cat "$dir/wsedge.pid")
echo "old process $old, new process $new"
grep -E "stopped pid=|upgrade" "$dir/wsedge.log" | sed 's/^[^ ]* *//' || true
cat "$dir/wsload.txt"
