#!/usr/bin/env bash
# Issue 9's resilience goal: one of three backends killed under 200
# handshakes/s. Three `wsload echo` servers behind wsedge with websocket
# health checks (interval 1s, timeout 500ms, fall 2, rise 2); `wsload
# connect -r 200` for 12 s; the second server is killed 4 s in. Prints the
# client's counts and errors, when the server was killed, and wsedge's
# ejection / DOWN lines (the goal: no failed handshake, the server out of
# rotation within fall × interval + 1 s = 3 s).
#
# Usage: loadtest/kill-one.sh   (needs release builds of wsedge and wsload)
set -euo pipefail
cd "$(dirname "$0")/.."
w=target/release/wsload
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat >"$dir/wsedge.toml" <<'TOML'
workers = 1
[[listener]]
address = "127.0.0.1:19300"
[[upstream]]
name = "echo"
servers = ["127.0.0.1:19301", "127.0.0.1:19302", "127.0.0.1:19303"]
[upstream.health]
kind = "websocket"
interval = "1s"
timeout = "500ms"
fall = 2
rise = 2
[[route]]
path = "/"
upstream = "echo"
TOML
declare -A echo
for p in 19301 19302 19303; do
    taskset -c 1 "$w" echo --listen "127.0.0.1:$p" --workers 1 >/dev/null 2>&1 &
    echo[$p]=$!
    pids+=($!)
done
sleep 0.3
WSEDGE_LOG=info NO_COLOR=1 taskset -c 0 target/release/wsedge --config "$dir/wsedge.toml" >"$dir/wsedge.log" 2>&1 &
pids+=($!)
sleep 1.5
taskset -c 1 "$w" connect ws://127.0.0.1:19300/ -r 200 -d 12s --warmup 0s --workers 1 >"$dir/connect.log" 2>&1 &
client=$!
sleep 4
killed=$(date -u +%H:%M:%S.%N)
kill "${echo[19302]}"
wait "$client" || true
grep -E "handshakes|error" "$dir/connect.log"
echo "killed 127.0.0.1:19302 at $killed"
sed 's/\x1b\[[0-9;]*m//g' "$dir/wsedge.log" | grep -E "ejected|DOWN|UP:" | cut -c1-200
