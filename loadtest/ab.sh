#!/usr/bin/env bash
# Interleaved before/after measurement of wsedge's proxy CPU per round trip:
# one echo server for the whole run, then ROUNDS pairs of fresh proxies
# (BEFORE, then AFTER), each measured by `wsload run --watch`. Medians over
# many interleaved pairs are what can show a few-percent change on a noisy
# machine; `wsload compare` runs each contender's scenarios back to back,
# and on a VM that order alone can cost the second contender several percent.
#
# Usage: loadtest/ab.sh BEFORE_BIN AFTER_BIN [SIZE=64] [ROUNDS=12] [CONNS=100]
# With TLS_CERT=FILE TLS_KEY=FILE in the environment the proxies terminate
# TLS with that certificate (made for `localhost`) and wsload dials wss://,
# verifying it against the same file.
# Needs 2 CPUs (proxy on CPU 0, wsload and the echo server on CPU 1) and a
# release build of wsload (target/release/wsload).
set -euo pipefail
cd "$(dirname "$0")/.."

before=${1:?before binary}
after=${2:?after binary}
size=${3:-64}
rounds=${4:-12}
conns=${5:-100}
wsload=target/release/wsload
echo_port=19101
proxy_port=19100
out=$(mktemp)
results=$(mktemp)
trap 'kill "$echo_pid" 2>/dev/null; rm -f "$out" "$results"' EXIT
tls_args=()
client_args=()
url="ws://127.0.0.1:$proxy_port/"
if [ -n "${TLS_CERT:-}" ]; then
    tls_args=(--tls-cert "$TLS_CERT" --tls-key "${TLS_KEY:?TLS_KEY with TLS_CERT}")
    client_args=(--ca "$TLS_CERT")
    url="wss://localhost:$proxy_port/"
fi

taskset -c 1 nice -n -10 "$wsload" echo --listen "127.0.0.1:$echo_port" --workers 1 >/dev/null 2>&1 &
echo_pid=$!
sleep 0.5
for i in $(seq 1 "$rounds"); do
    for which in before after; do
        bin=$before
        [ "$which" = after ] && bin=$after
        taskset -c 0 nice -n -10 "$bin" --listen "127.0.0.1:$proxy_port" \
            --upstream "127.0.0.1:$echo_port" --workers 1 ${tls_args[@]+"${tls_args[@]}"} >/dev/null 2>&1 &
        pid=$!
        sleep 0.4
        taskset -c 1 nice -n -10 "$wsload" run "$url" ${client_args[@]+"${client_args[@]}"} -c "$conns" -s "$size" \
            -d 3s --warmup 1s --workers 1 --watch "proxy=$pid" >"$out" 2>&1
        us=$(awk '/cpu proxy/ {print $3}' "$out")
        echo "$which $us" | tee -a "$results"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
done
python3 - "$results" "$size" <<'EOF'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
b = [float(r[1]) for r in rows if r[0] == "before"]
a = [float(r[1]) for r in rows if r[0] == "after"]
pairs = [y / x for x, y in zip(b, a)]
print(f"size {sys.argv[2]} B, {len(pairs)} pairs: proxy CPU µs per round trip, "
      f"before median {st.median(b):.2f}, after median {st.median(a):.2f}, "
      f"after/before {st.median(a) / st.median(b):.3f} (median of pair ratios {st.median(pairs):.3f})")
EOF
